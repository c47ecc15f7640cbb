package binding

import (
	"slices"
	"strings"
	"testing"
)

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		tmpl    string
		cols    []string
		pattern string
	}{
		{"price:{item}", []string{"item"}, "price:*"},
		{"stock:{store}:{item}", []string{"store", "item"}, "stock:*:*"},
		{"{item}", []string{"item"}, "*"},
		{"{a}:{b}:x", []string{"a", "b"}, "*:*:x"},
		{"{{shop}}:price:{item}", []string{"item"}, "{shop}:price:*"},
		{"{{{store}}}:stock:{item}", []string{"store", "item"}, "{*}:stock:*"},
		{"k:{_x1}/{Y_2}", []string{"_x1", "Y_2"}, "k:*/*"},
		{"glob*?[]\\:{id}", []string{"id"}, `glob\*\?\[\]\\:*`},
		{"ünï:{id}", []string{"id"}, "ünï:*"},
	}
	for _, tt := range tests {
		tp, err := ParseTemplate(tt.tmpl)
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.tmpl, err)
			continue
		}
		if got := tp.Columns(); !slices.Equal(got, tt.cols) {
			t.Errorf("%q: Columns() = %q, want %q", tt.tmpl, got, tt.cols)
		}
		if got := tp.Pattern(); got != tt.pattern {
			t.Errorf("%q: Pattern() = %q, want %q", tt.tmpl, got, tt.pattern)
		}
		if got := tp.String(); got != tt.tmpl {
			t.Errorf("String() = %q, want %q", got, tt.tmpl)
		}
	}
}

func TestParseTemplateErrors(t *testing.T) {
	tests := []struct{ tmpl, want string }{
		{"", "no {column} placeholder"},
		{"price", "no {column} placeholder"},
		{"{{item}}", "no {column} placeholder"},
		{"price:{item", "unterminated placeholder at offset 6"},
		{"price:{", "unterminated placeholder at offset 6"},
		{"price}:{item}", `unmatched "}" at offset 5`},
		{"{item}}", `unmatched "}" at offset 6`},
		{"a:{}", "empty placeholder name at offset 2"},
		{"a:{x-y}", `bad placeholder name "x-y" at offset 2`},
		{"a:{1x}", `bad placeholder name "1x" at offset 2`},
		{"a:{ x}", `bad placeholder name " x" at offset 2`},
		{"a:{x{y}", `bad placeholder name "x{y" at offset 2`},
		{"{a}:{b}:{a}", `column "a" is used twice (offsets 0 and 8)`},
		{"{a}{b}", "placeholders {a} and {b} at offset 3 have no literal text between them"},
	}
	for _, tt := range tests {
		_, err := ParseTemplate(tt.tmpl)
		if err == nil {
			t.Errorf("ParseTemplate(%q): want error containing %q", tt.tmpl, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseTemplate(%q) error %q, want one line containing %q", tt.tmpl, err, tt.want)
		}
	}
}

func bs(vals ...string) [][]byte {
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(v)
	}
	return out
}

func TestRenderParse(t *testing.T) {
	tests := []struct {
		tmpl string
		vals []string
		key  string
	}{
		{"price:{item}", []string{"apple"}, "price:apple"},
		{"price:{item}", []string{""}, "price:"},
		{"price:{item}", []string{"a:b:{c}*"}, "price:a:b:{c}*"},
		{"stock:{store}:{item}", []string{"s1", "apple"}, "stock:s1:apple"},
		{"stock:{store}:{item}", []string{"", ""}, "stock::"},
		{"stock:{store}:{item}", []string{"s1", "a:b"}, "stock:s1:a:b"},
		{"{{shop}}:price:{item}", []string{"apple"}, "{shop}:price:apple"},
		{"{{{store}}}:{item}", []string{"s1", "x"}, "{s1}:x"},
		{"{a}-{b}.json", []string{"x", "y.json"}, "x-y.json.json"},
		{"{a}::{b}", []string{"x", ":y"}, "x:::y"},
		{"u:{name}", []string{"日本 ünï"}, "u:日本 ünï"},
	}
	for _, tt := range tests {
		tp, err := ParseTemplate(tt.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		key, err := tp.Render([]byte("pre|"), bs(tt.vals...))
		if err != nil {
			t.Errorf("%q.Render(%q): %v", tt.tmpl, tt.vals, err)
			continue
		}
		if string(key) != "pre|"+tt.key {
			t.Errorf("%q.Render(%q) = %q, want %q", tt.tmpl, tt.vals, key, tt.key)
		}
		got, ok := tp.Parse(tt.key)
		if !ok || !slices.Equal(got, tt.vals) {
			t.Errorf("%q.Parse(%q) = %q, %v; want %q", tt.tmpl, tt.key, got, ok, tt.vals)
		}
		if !globMatch(tp.Pattern(), tt.key) {
			t.Errorf("%q: key %q does not match Pattern %q", tt.tmpl, tt.key, tp.Pattern())
		}
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		tmpl string
		vals [][]byte
		want string
	}{
		{"price:{item}", [][]byte{nil}, `column "item" is NULL`},
		{"s:{a}:{b}", [][]byte{[]byte("x"), nil}, `column "b" is NULL`},
		{"s:{a}:{b}", bs("x:y", "z"), `value "x:y" of column "a" runs into the separator ":"`},
		{"{a}::{b}", bs("x:", "y"), `value "x:" of column "a" runs into the separator "::"`},
		{"{a}-{b}-{c}", bs("x", "y-", "z"), `column "b"`},
		{"s:{a}", bs("x", "y"), "got 2 values for 1 columns"},
		{"s:{a}:{b}", bs("x"), "got 1 values for 2 columns"},
	}
	for _, tt := range tests {
		tp, err := ParseTemplate(tt.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tp.Render([]byte("keep"), tt.vals)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q.Render(%q) error = %v, want %q", tt.tmpl, tt.vals, err, tt.want)
		}
		if string(got) != "keep" {
			t.Errorf("Render error returned dst %q, want it unchanged", got)
		}
	}
}

func TestParseMismatch(t *testing.T) {
	tests := []struct{ tmpl, key string }{
		{"price:{item}", "cost:apple"},
		{"price:{item}", "price"},
		{"stock:{store}:{item}", "stock:s1"},
		{"{a}.json", "x.txt"},
		{"{a}-{b}.json", "x.json"},
		{"{{shop}}:{item}", "shop:x"},
	}
	for _, tt := range tests {
		tp, err := ParseTemplate(tt.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := tp.Parse(tt.key); ok {
			t.Errorf("%q.Parse(%q) = %q, want no match", tt.tmpl, tt.key, got)
		}
	}
}

func TestRenderNoAlloc(t *testing.T) {
	tp, err := ParseTemplate("{{shop}}:stock:{store}:{item}")
	if err != nil {
		t.Fatal(err)
	}
	vals := bs("s1", "apple")
	dst := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { dst, _ = tp.Render(dst[:0], vals) }); n != 0 {
		t.Fatalf("Render allocs = %v, want 0", n)
	}
}

// globMatch matches key against a Redis glob that uses only '*' and '\' escapes,
// which is all Template.Pattern produces.
func globMatch(pattern, key string) bool {
	type tok struct {
		c    byte
		star bool
	}
	var toks []tok
	for i := 0; i < len(pattern); i++ {
		switch pattern[i] {
		case '*':
			toks = append(toks, tok{star: true})
		case '\\':
			i++
			toks = append(toks, tok{c: pattern[i]})
		case '?', '[', ']':
			panic("unexpected glob special in " + pattern)
		default:
			toks = append(toks, tok{c: pattern[i]})
		}
	}
	// Classic wildcard matching with a single backtrack point.
	p, k, starP, starK := 0, 0, -1, 0
	for k < len(key) {
		switch {
		case p < len(toks) && toks[p].star:
			starP, starK = p, k
			p++
		case p < len(toks) && toks[p].c == key[k]:
			p++
			k++
		case starP >= 0:
			starK++
			p, k = starP+1, starK
		default:
			return false
		}
	}
	for p < len(toks) && toks[p].star {
		p++
	}
	return p == len(toks)
}

func FuzzTemplateRoundTrip(f *testing.F) {
	f.Add("stock:{store}:{item}", "s1", "apple", "x")
	f.Add("{a}::{b}", "x:", ":y", "")
	f.Add("{a}-{b}-{c}.json", "a-b", "-", ".json")
	f.Add("{{shop}}:{a}{{{b}}}", "{", "}}", "")
	f.Add("{a}aa{b}ab{c}", "aaa", "aba", "b")
	f.Add("{x}", "anything", "", "")
	f.Fuzz(func(t *testing.T, tmpl, v1, v2, v3 string) {
		tp, err := ParseTemplate(tmpl)
		if err != nil {
			return
		}
		src := []string{v1, v2, v3}
		vals := make([][]byte, len(tp.Columns()))
		for i := range vals {
			vals[i] = []byte(src[i%3])
		}
		key, err := tp.Render(nil, vals)
		if err == nil {
			got, ok := tp.Parse(string(key))
			if !ok {
				t.Fatalf("%q: Parse(Render(%q)) = %q did not match", tmpl, vals, key)
			}
			for i := range vals {
				if got[i] != string(vals[i]) {
					t.Fatalf("%q: Parse(%q) = %q, want %q", tmpl, key, got, vals)
				}
			}
			if !globMatch(tp.Pattern(), string(key)) {
				t.Fatalf("%q: key %q does not match Pattern %q", tmpl, key, tp.Pattern())
			}
		}
		// The other direction: any key Parse accepts renders back to itself.
		for _, k := range src {
			got, ok := tp.Parse(k)
			if !ok {
				continue
			}
			back, err := tp.Render(nil, bs(got...))
			if err != nil || string(back) != k {
				t.Fatalf("%q: Render(Parse(%q) = %q) = %q, %v", tmpl, k, got, back, err)
			}
		}
	})
}
