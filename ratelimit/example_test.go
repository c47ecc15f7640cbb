package ratelimit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/ratelimit"
)

// A policy is checked before any Redis is asked.
func ExamplePolicy_Validate() {
	fmt.Println(ratelimit.Policy{Algorithm: ratelimit.GCRA, Limit: 5, Window: time.Minute}.Validate())
	fmt.Println(ratelimit.Policy{Algorithm: ratelimit.Fixed, Limit: 5, Window: time.Minute, Burst: 2}.Validate())
	// Output:
	// <nil>
	// ratelimit: burst is for gcra only, not fixed
}

// Five logins a minute per user, smoothly: GCRA.
func Example() {
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
	if err != nil {
		panic(err)
	}
	defer client.Close()
	logins, err := ratelimit.New(client, "myapp:ratelimit:login:", ratelimit.Policy{Algorithm: ratelimit.GCRA, Limit: 5, Window: time.Minute})
	if err != nil {
		panic(err)
	}
	d, err := logins.Allow(context.Background(), "alice")
	if err != nil {
		panic(err)
	}
	if !d.Allowed {
		fmt.Println("too many logins; try again in", d.RetryAfter)
	}
}
