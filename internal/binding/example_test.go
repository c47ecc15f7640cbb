package binding_test

import (
	"fmt"

	"github.com/cachesync/cachesync/internal/binding"
)

// A key template renders a row's key from its key columns and parses a key
// back into them.
func ExampleTemplate() {
	t, err := binding.ParseTemplate("stock:{store}:{item}")
	if err != nil {
		panic(err)
	}
	key, _ := t.Render(nil, [][]byte{[]byte("downtown"), []byte("apple")})
	fmt.Println(string(key))
	fmt.Println(t.Parse("stock:uptown:pear"))
	fmt.Println(t.Parse("price:apple"))
	_, err = t.Render(nil, [][]byte{[]byte("a:b"), []byte("apple")}) // would parse back otherwise
	fmt.Println(err != nil)
	// Output:
	// stock:downtown:apple
	// [uptown pear] true
	// [] false
	// true
}
