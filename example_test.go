package cachesync_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/cachesync/cachesync"
	"github.com/cachesync/cachesync/config"
)

// Open a client on the config the daemon runs (examples/grocery.yaml), read
// a price through the cache, and change it.
func Example() {
	ctx := context.Background()
	cfg, err := config.LoadFile("examples/grocery.yaml") // ${REDIS_URL}, ${DATABASE_URL} from the environment
	if err != nil {
		log.Fatal(err)
	}
	c, err := cachesync.Open(ctx, cfg, cachesync.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	v, err := c.Get(ctx, "prices", "price:apple") // Redis, or on a miss PostgreSQL (one query however many ask)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(v))

	// Write-through: the row goes to PostgreSQL; Put returns once the change
	// feed has put it in Redis, so the next Get reads it.
	key, err := c.Put(ctx, "prices", map[string]any{"item": "apple", "price": "2.49", "category": "fruit"})
	if err != nil {
		log.Fatal(err)
	}
	v, err = c.Get(ctx, "prices", key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(key, string(v))
	// Output:
	// {"item":"apple","price":1.99}
	// price:apple {"item":"apple","price":2.49}
}

func ExampleClient_Get() {
	ctx := context.Background()
	cfg, err := config.LoadFile("examples/grocery.yaml")
	if err != nil {
		log.Fatal(err)
	}
	c, err := cachesync.Open(ctx, cfg, cachesync.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	for _, key := range []string{"price:banana", "price:kiwi", "item:apple"} {
		v, err := c.Get(ctx, "prices", key)
		switch {
		case errors.Is(err, cachesync.ErrNotFound):
			fmt.Println(key, "no such item") // remembered for the cache's negative_ttl
		case errors.Is(err, cachesync.ErrBadKey):
			fmt.Println(key, "not a key of this cache")
		case err != nil:
			log.Fatal(err)
		default:
			fmt.Println(key, string(v))
		}
	}
	// Output:
	// price:banana {"item":"banana","price":0.59}
	// price:kiwi no such item
	// item:apple not a key of this cache
}

func ExampleClient_Invalidate() {
	ctx := context.Background()
	cfg, err := config.LoadFile("examples/grocery.yaml")
	if err != nil {
		log.Fatal(err)
	}
	c, err := cachesync.Open(ctx, cfg, cachesync.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// The key is removed and, the prices cache holding every row (a change
	// feed and no TTL would make it complete) or not, the next Get loads the
	// row again; a fill in progress for the key loses.
	if err := c.Invalidate(ctx, "prices", "price:cherry"); err != nil {
		log.Fatal(err)
	}
	v, err := c.Get(ctx, "prices", "price:cherry")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(v))
	// Output: {"item":"cherry","price":4.50}
}
