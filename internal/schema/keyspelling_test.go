package schema_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/pgtext"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// TestKeySpelling holds pgtext.Canonical to PostgreSQL itself, in the
// session the change feed reads in, for every type a key column has: a
// spelling it calls exact is PostgreSQL's output for the value, and every
// output of PostgreSQL is a spelling it accepts as it is.
func TestKeySpelling(t *testing.T) {
	_, url := world.Postgres(t).Database(t, "keyspelling", `
		CREATE TABLE k (i2 int2, i4 int, i8 bigint, n numeric(5,2), n0 numeric, t text, v varchar(3), c char(4),
			b bool, u uuid, d date, ts timestamp, ts0 timestamp(0), tz timestamptz, nm name,
			n23 numeric(2,3), n50 numeric(5,0), ts3 timestamp(3), tz2 timestamptz(2), c1 char(3))`)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range pgsource.SessionParams {
		cfg.RuntimeParams[k] = v
	}
	ctx := context.Background()
	db, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	tbl, err := pgsource.LoadTable(ctx, db, "k")
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[string][]string{
		"i2":  {"1", "01", "+1", " 1", "-0", "40000", "-32768", "1_0", "0x10", "a\x00b"},
		"i4":  {"1", "01", "0001", "1 ", "99999999999", "-2147483648", "2147483648", "1.0"},
		"i8":  {"9223372036854775807", "-9223372036854775808", "09", "1e3"},
		"n":   {"1p3", "0x1p3", "1P1", "1,5", "1.50", "1.5", "1.505", "-1.505", "-0.001", "1e2", "999.995", "999.99", "nan", "NaN", "Infinity", "0", "-0.00", ".5", "5."},
		"n0":  {"1.50", "1.5"},
		"t":   {" two words ", "a\xffb", "", "x:y"},
		"v":   {"abc", "abcd", "ab "},
		"c":   {"ab", "ab  ", "ab   ", "abcd", "abcde", " a"},
		"b":   {"t", "f", "true", "yes", "0", "maybe"},
		"u":   {" a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11", "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}", "a0eebc99"},
		"d":   {"2026-01-02 03:04:05,5", "2026-01-02", "2026-1-2", "2026-02-29", "2024-02-29", "0001-02-29 BC", "0044-03-15 BC", "infinity", "-infinity", "10000-01-01", "Jan 2 2026", "0099-01-01", "99-01-01", "0000-01-01", "5874897-12-31", "5874898-01-01", "4714-11-24 BC", "4714-11-23 BC", "2026-01-02T03:04:05Z", "20260102", "2026/1/2", "2026-1-02"},
		"ts":  {"2026-01-02 03:04:05,5", "2026-01-02 03:04:05,00", "2026-01-02 03:04:05", "2026-01-02 03:04:05.5", "2026-01-02 03:04:05.50", "2026-01-02 03:04:05.1234567", "2026-01-02T03:04:05", "2026-01-02T03:04:05.250", "2026-01-02 24:00:00", "2026-01-02 03:04:60", "infinity", "294276-12-31 23:59:59", "294277-01-01 00:00:00", "4714-11-24 00:00:00 BC"},
		"ts0": {"2026-01-02 03:04:05", "2026-01-02 03:04:05.5"},
		"tz":  {"2026-01-02 03:04:05+00", "2026-01-02 03:04:05.5+00", "2026-01-02 03:04:05.50+00", "2026-01-02T03:04:05Z", "2026-01-02 03:04:05+01", "2026-01-02 03:04:05.000-05:30", "2026-01-02T03:04:05.123456+00:00", "0044-03-15 12:00:00+00 BC", "-infinity"},
		"nm":  {"short", string(make([]byte, 70))},
		"n23": {"0.001", "-0.050", "0.000", "0.099", "0.0995", "0.1", "0", "-0.0001"},
		"n50": {"12345", "123456", "1.5", "-2.5", "99999.4", "99999.5", "0", "-0"},
		"ts3": {"2026-01-02 03:04:05.123", "2026-01-02 03:04:05.1234", "2026-01-02T03:04:05.12Z"},
		"tz2": {"2026-01-02 03:04:05.12+00", "2026-01-02 03:04:05.125+00", "2026-01-02 03:04:05", "2026-01-02T03:04:05.1+02:00"},
		"c1":  {"é", "éé ", "ééé", "éééé", " é"},
	}
	for name, values := range inputs {
		col, _ := tbl.Column(name)
		typmod := col.Typmod
		for _, s := range values {
			var out *string
			pgErr := db.QueryRow(ctx, "SELECT format('%s', $1::text::"+col.Declared+")", s).Scan(&out)
			canon, err := pgtext.Canonical(col.TypeOID, typmod, s)
			exact := pgtext.Exact(col.TypeOID, typmod)
			switch {
			case err == nil && exact && pgErr != nil:
				t.Errorf("%s %q: spelled %q, but PostgreSQL refuses it: %v", col.Declared, s, canon, pgErr)
			case err == nil && exact && *out != canon:
				t.Errorf("%s %q: spelled %q, but PostgreSQL prints %q", col.Declared, s, canon, *out)
			case pgErr == nil && *out == s && (err != nil || canon != s):
				t.Errorf("%s %q: PostgreSQL prints it so, but Canonical says %q, %v", col.Declared, s, canon, err)
			}
		}
	}
}
