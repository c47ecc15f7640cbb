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
	fmt.Println(string(v)) // {"item":"apple","price":1.99}

	// Write-through: the row goes to PostgreSQL; Put returns once the change
	// feed has put it in Redis, so the next Get reads it.
	if _, err := c.Put(ctx, "prices", map[string]any{"item": "apple", "price": "2.49"}); err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_Get() {
	var c *cachesync.Client // from cachesync.Open
	v, err := c.Get(context.Background(), "prices", "price:kiwi")
	switch {
	case errors.Is(err, cachesync.ErrNotFound):
		fmt.Println("no such item") // remembered for the cache's negative_ttl
	case errors.Is(err, cachesync.ErrBadKey):
		fmt.Println("not a key of this cache")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println(string(v))
	}
}

func ExampleClient_Invalidate() {
	var c *cachesync.Client // from cachesync.Open
	// The next Get loads the row again; a fill in progress for the key loses.
	if err := c.Invalidate(context.Background(), "prices", "price:apple"); err != nil {
		log.Fatal(err)
	}
}
