package config_test

import (
	"fmt"
	"strings"

	"github.com/cachesync/cachesync/config"
)

// A config names Redis, the PostgreSQL sources and the caches; a mistake is
// refused with the field that holds it.
func ExampleLoad() {
	cfg, err := config.Load(strings.NewReader(`
name: shop
redis: {url: "redis://127.0.0.1:6379/0"}
sources:
  catalog: {url: "postgres://app@127.0.0.1/shop"}
caches:
  prices:
    source: catalog
    table: public.inventory
    key: "price:{item}"
    value: {format: json, columns: {item: item, price: price}}
    ttl: 10m
    sync: changefeed
`))
	if err != nil {
		panic(err)
	}
	fmt.Println(cfg.CacheNames(), cfg.Caches["prices"].TTL)

	_, err = config.Load(strings.NewReader("name: shop\nredis: {url: \"redis://127.0.0.1:6379\"}\nsources: {catalog: {url: \"postgres://127.0.0.1/shop\"}}\ncaches: {prices: {source: catalog, table: inventory, key: \"price:{item\", value: {format: string, column: price}}}\n"))
	fmt.Println(err)
	// Output:
	// [prices] 10m0s
	// config: caches.prices.key: binding: key template "price:{item": unterminated placeholder at offset 6 (write "{{" for a literal "{")
}
