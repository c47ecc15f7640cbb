package pgtext

// The array parser passes indexes rather than subslices of text between its
// (mutually recursive) functions so that escape analysis can prove text does not
// escape, keeping callers free of allocations.

// appendArray appends the JSON array form of PostgreSQL array text whose elements
// have type elem and are separated by delim.
func appendArray(dst []byte, elem uint32, delim byte, text []byte, depth int) ([]byte, error) {
	n := len(dst)
	i := skipSpace(text, 0)
	if i < len(text) && text[i] == '[' {
		// Dimension decoration such as "[0:1]={1,2}": skip it.
		for i < len(text) && text[i] != '=' {
			i++
		}
		if i == len(text) {
			return dst, errArray
		}
		i++
	}
	dst, i, err := appendArrayLevel(dst, elem, delim, text, i, depth)
	if err != nil {
		return dst[:n], err
	}
	if skipSpace(text, i) != len(text) {
		return dst[:n], errArray
	}
	return dst, nil
}

// appendArrayLevel converts the brace-delimited level at text[i:] and returns the
// index after its closing brace.
func appendArrayLevel(dst []byte, elem uint32, delim byte, text []byte, i, depth int) ([]byte, int, error) {
	if depth >= maxArrayDepth {
		return dst, i, errArrayDeep
	}
	i = skipSpace(text, i)
	if i >= len(text) || text[i] != '{' {
		return dst, i, errArray
	}
	dst = append(dst, '[')
	i = skipSpace(text, i+1)
	if i < len(text) && text[i] == '}' {
		return append(dst, ']'), i + 1, nil
	}
	var err error
	for {
		i = skipSpace(text, i)
		if i >= len(text) {
			return dst, i, errArray
		}
		switch text[i] {
		case '{':
			if dst, i, err = appendArrayLevel(dst, elem, delim, text, i, depth+1); err != nil {
				return dst, i, err
			}
		case '"':
			start, esc := i+1, false
			for i = start; i < len(text) && text[i] != '"'; i++ {
				if text[i] == '\\' {
					esc = true
					i++
				}
			}
			if i >= len(text) {
				return dst, i, errArray // unterminated quoted element
			}
			if dst, err = appendElem(dst, elem, text[start:i], esc, depth); err != nil {
				return dst, i, err
			}
			i++ // closing quote
		default:
			start, esc := i, false
			for ; i < len(text) && text[i] != delim && text[i] != '}' && text[i] != '{' && text[i] != '"'; i++ {
				if text[i] == '\\' {
					esc = true
					i++
				}
			}
			if i >= len(text) {
				return dst, i, errArray // unterminated array
			}
			raw := text[start:i]
			if !esc {
				raw = trimRightSpace(raw)
			}
			switch {
			case len(raw) == 0:
				return dst, i, errArray // empty unquoted element
			case !esc && isNULL(raw):
				dst = append(dst, "null"...)
			default:
				if dst, err = appendElem(dst, elem, raw, esc, depth); err != nil {
					return dst, i, err
				}
			}
		}
		i = skipSpace(text, i)
		switch {
		case i >= len(text):
			return dst, i, errArray
		case text[i] == delim:
			dst = append(dst, ',')
			i++
		case text[i] == '}':
			return append(dst, ']'), i + 1, nil
		default:
			return dst, i, errArray
		}
	}
}

// isNULL reports whether an unquoted element is the NULL marker (case-insensitive).
func isNULL(b []byte) bool {
	return len(b) == 4 && b[0]|0x20 == 'n' && b[1]|0x20 == 'u' && b[2]|0x20 == 'l' && b[3]|0x20 == 'l'
}

// appendElem converts one array element; esc says whether raw still contains
// backslash escapes, which are then removed in scratch space at the end of dst.
func appendElem(dst []byte, elem uint32, raw []byte, esc bool, depth int) ([]byte, error) {
	if !esc {
		return appendJSON(dst, elem, raw, depth+1)
	}
	mark := len(dst)
	for i := 0; i < len(raw); i++ {
		if raw[i] == '\\' {
			i++ // the scanner guarantees that a character follows
		}
		dst = append(dst, raw[i])
	}
	end := len(dst)
	// Appending never writes below end, so dst[mark:end] stays intact as input
	// (if append reallocates, the old array is left untouched).
	dst, err := appendJSON(dst, elem, dst[mark:end:end], depth+1)
	if err != nil {
		return dst[:mark], err
	}
	k := copy(dst[mark:], dst[end:])
	return dst[:mark+k], nil
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func skipSpace(p []byte, i int) int {
	for i < len(p) && isSpace(p[i]) {
		i++
	}
	return i
}

func trimRightSpace(p []byte) []byte {
	for len(p) > 0 && isSpace(p[len(p)-1]) {
		p = p[:len(p)-1]
	}
	return p
}
