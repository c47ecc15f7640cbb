package pgtext

import (
	"bytes"
	"errors"
)

var errCopyBackslash = errors.New("pgtext: COPY line ends with an unfinished backslash escape")

// ParseCopyLine splits one line of COPY ... TO STDOUT text format (tab-delimited,
// without its trailing newline; a single trailing "\n" is tolerated and dropped) into
// fields, decoding the backslash escapes \b \f \n \r \t \v \\ \NNN (octal) \xHH (hex)
// and treating any other backslash-char as that char, exactly as PostgreSQL's COPY
// FROM does; a field that is exactly \N is NULL and is returned as nil, while an empty
// field is a non-nil empty slice.
//
// Ownership and validity: escapes are decoded IN PLACE, so ParseCopyLine may
// overwrite line, and every returned field is a subslice of line (capacity-limited,
// so appending to a field never clobbers its neighbour). The fields therefore stay
// valid exactly as long as the caller keeps line's bytes unchanged; they are not
// affected by later calls unless line's memory is reused. The returned outer slice
// reuses dst's backing array (pass the previous result, re-sliced or not, to avoid
// allocating), so it is overwritten by the next call given the same dst. Do not parse
// the same line twice, and do not pass memory you must not modify (such as the p
// of an io.Writer.Write call): copy it first. On error line and the fields are left
// untouched and the returned slice is empty.
func ParseCopyLine(line []byte, dst [][]byte) ([][]byte, error) {
	dst = dst[:0]
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
	}
	// A line ending in an odd run of backslashes ends inside an escape; check it up
	// front so that nothing is modified when we fail.
	run := 0
	for i := len(line) - 1; i >= 0 && line[i] == '\\'; i-- {
		run++
	}
	if run%2 == 1 {
		return dst, errCopyBackslash
	}
	if line == nil {
		line = []byte{}
	}
	start := 0
	for {
		rest := line[start:]
		end := bytes.IndexByte(rest, '\t')
		if end < 0 {
			end = len(rest)
		}
		if bytes.IndexByte(rest[:end], '\\') < 0 {
			// Fast path: no escapes, the field is the raw text.
			dst = append(dst, rest[:end:end])
			start += end
		} else if end == 2 && rest[0] == '\\' && rest[1] == 'N' {
			dst = append(dst, nil)
			start += end
		} else {
			// Decode escapes in place; an escaped tab does not end the field, so the
			// end found above is only a lower bound.
			r, w := start, start
			for r < len(line) && line[r] != '\t' {
				c := line[r]
				r++
				if c == '\\' {
					c, r = unescapeCopy(line, r)
				}
				line[w] = c
				w++
			}
			dst = append(dst, line[start:w:w])
			start = r
		}
		if start >= len(line) {
			return dst, nil
		}
		start++ // skip the tab
	}
}

// unescapeCopy decodes the escape whose backslash precedes line[r] and returns the
// byte and the index after the escape. The caller guarantees r < len(line).
func unescapeCopy(line []byte, r int) (byte, int) {
	c := line[r]
	r++
	switch c {
	case 'b':
		return '\b', r
	case 'f':
		return '\f', r
	case 'n':
		return '\n', r
	case 'r':
		return '\r', r
	case 't':
		return '\t', r
	case 'v':
		return '\v', r
	case '0', '1', '2', '3', '4', '5', '6', '7':
		v := c - '0'
		for k := 0; k < 2 && r < len(line) && isOctal(line[r]); k++ {
			v = v<<3 | (line[r] - '0')
			r++
		}
		return v, r
	case 'x':
		if r < len(line) && hexVal[line[r]] <= 0xf {
			v := hexVal[line[r]]
			r++
			if r < len(line) && hexVal[line[r]] <= 0xf {
				v = v<<4 | hexVal[line[r]]
				r++
			}
			return v, r
		}
	}
	return c, r
}
