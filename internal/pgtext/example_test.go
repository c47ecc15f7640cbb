package pgtext_test

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/cachesync/cachesync/internal/pgtext"
)

// A key names a row by PostgreSQL's own spelling of its values: "01" and
// "1" are one integer, and only "1" is its key's spelling.
func ExampleCanonical() {
	for _, in := range []struct {
		oid uint32
		s   string
	}{{pgtype.Int4OID, "01"}, {pgtype.BoolOID, "yes"}, {pgtype.DateOID, "2026-1-2"}, {pgtype.Int2OID, "99999"}} {
		canon, err := pgtext.Canonical(in.oid, -1, in.s)
		fmt.Printf("%q → %q %v\n", in.s, canon, err)
	}
	// Output:
	// "01" → "1" <nil>
	// "yes" → "t" <nil>
	// "2026-1-2" → "2026-01-02" <nil>
	// "99999" → "" out of range for a 16-bit integer
}
