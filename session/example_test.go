package session_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/session"
)

func Example() {
	ctx := context.Background()
	var rc rueidis.Client // your client: rueidis.NewClient(rueidis.ClientOption{...})
	store, _ := session.New(rc, "app:session:")
	sess, err := store.Create(ctx, []byte(`{"user":7}`), session.Options{Idle: 30 * time.Minute, Lifetime: 24 * time.Hour})
	if err != nil {
		panic(err)
	}
	// Set sess.ID in a cookie. On each request:
	sess, err = store.Get(ctx, sess.ID) // slides the idle timeout, within the lifetime
	if errors.Is(err, session.ErrNotFound) {
		fmt.Println("log in again")
	}
	store.Update(ctx, sess.ID, []byte(`{"user":7,"cart":[3]}`))
	store.Destroy(ctx, sess.ID) // log out
}
