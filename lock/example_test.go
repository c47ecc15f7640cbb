package lock_test

import (
	"context"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/lock"
)

// One worker at a time runs the nightly report, and its writes carry the
// fencing token for the store to check.
func Example() {
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
	if err != nil {
		panic(err)
	}
	defer client.Close()
	locks := lock.New(client, "myapp:lock:")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease, err := locks.Acquire(ctx, "nightly-report", 30*time.Second)
	if err != nil {
		panic(err) // another worker held it all minute
	}
	defer locks.Release(context.WithoutCancel(ctx), lease.Name, lease.Token)
	writeReport(ctx, lease.Fence) // the store refuses a fence lower than one it has seen
}

func writeReport(context.Context, int64) {}
