package httpapi_test

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// routeRE matches a route registered on a mux: the method and path of the
// pattern literal passed to HandleFunc or Handle.
var routeRE = regexp.MustCompile(`\.Handle(?:Func)?\("([A-Z]+) (/[^"]*)"`)

// restRE matches a wildcard that takes the rest of the path, {name...}.
var restRE = regexp.MustCompile(`\{(\w+)\.\.\.\}`)

// TestOpenAPIRoutes: docs/openapi.yaml describes exactly the routes the
// package's source registers (New, Observe and the Serve* methods), each
// with its method. The routes are read from the source, so the test needs
// no server; every HandleFunc or Handle call must pass a literal pattern.
func TestOpenAPIRoutes(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	inSource := map[string]bool{} // "GET /v1/sessions/{id}"
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		calls := strings.Count(src, ".HandleFunc(") + strings.Count(src, ".Handle(")
		found := routeRE.FindAllStringSubmatch(src, -1)
		if len(found) != calls {
			t.Fatalf("%s: %d HandleFunc/Handle calls, %d with a literal \"METHOD /path\" pattern: the test reads only those", f, calls, len(found))
		}
		for _, m := range found {
			inSource[m[1]+" "+openAPIPath(m[2])] = true
		}
	}
	if len(inSource) == 0 {
		t.Fatal("no route found in the source")
	}

	b, err := os.ReadFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	methods := []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}
	inDoc := map[string]bool{}
	for path, item := range doc.Paths {
		for m := range item {
			if slices.Contains(methods, m) {
				inDoc[strings.ToUpper(m)+" "+path] = true
			}
		}
	}

	for _, r := range slices.Sorted(maps.Keys(inSource)) {
		if !inDoc[r] {
			t.Errorf("%s is served but not in docs/openapi.yaml", r)
		}
	}
	for _, r := range slices.Sorted(maps.Keys(inDoc)) {
		if !inSource[r] {
			t.Errorf("%s is in docs/openapi.yaml but not served", r)
		}
	}
}

// openAPIPath spells a ServeMux path as OpenAPI does: {key...} is {key},
// and the exact-match {$} is dropped.
func openAPIPath(p string) string {
	p = strings.TrimSuffix(p, "{$}")
	return restRE.ReplaceAllString(p, "{$1}")
}
