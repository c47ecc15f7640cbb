package leaderboard_test

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/leaderboard"
)

// A weekly board is named by its ISO week in UTC and expires a week after
// the week ends.
func ExampleLeaderboards_Board() {
	l, _ := leaderboard.New(nil, "game:lb:", leaderboard.Options{})
	b := l.Board("chess", leaderboard.Weekly, time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC))
	fmt.Println(b.Keys()[0], b.Expires().UTC().Format(time.RFC3339))
	// Output: game:lb:{week:2026-W49:chess} 2026-12-14T00:00:00Z
}

func Example() {
	ctx := context.Background()
	var rc rueidis.Client // your client: rueidis.NewClient(rueidis.ClientOption{...})
	l, _ := leaderboard.New(rc, "game:lb:", leaderboard.Options{})
	today := l.Board("chess", leaderboard.Daily, time.Now())
	today.Add(ctx, "ann", 30)
	today.Add(ctx, "bob", 30) // ties with ann, who got there first
	top, _ := today.Top(ctx, 0, 10)
	for _, e := range top {
		fmt.Println(e.Rank, e.Member, e.Score)
	}
	me, _ := today.Around(ctx, "bob", 2) // bob with two above and two below
	fmt.Println(len(me))
}
