package schema_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/pgsource"
	"github.com/cachesync/cachesync/internal/schema"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

func TestMain(m *testing.M) { world.Main(m) }

// check loads the one cache c (a YAML flow mapping) against db.
func check(t *testing.T, db *pgx.Conn, c string) error {
	t.Helper()
	y := fmt.Sprintf("name: t\nredis: {url: \"redis://127.0.0.1:1/0\"}\nsources:\n  db: {url: %q}\ncaches:\n  c: %s\n",
		db.Config().ConnString(), c)
	cfg, err := config.Load(strings.NewReader(y))
	if err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	_, err = schema.LoadTables(context.Background(), db, []*config.Cache{cfg.Caches["c"]})
	return err
}

// TestIdentityAdvice: a change-feed cache whose key columns PostgreSQL does
// not send on delete is refused with every way out, the cheapest first:
// REPLICA IDENTITY USING INDEX only with an index PostgreSQL accepts and
// that holds every key column. Each suggestion is then run, and the cache
// is accepted; each index left out is refused by PostgreSQL.
func TestIdentityAdvice(t *testing.T) {
	db, _ := world.Postgres(t).Database(t, "identity", `
		CREATE TABLE t1 (a int PRIMARY KEY, c text NOT NULL UNIQUE);
		CREATE TABLE t2 (a int PRIMARY KEY, c text UNIQUE);
		CREATE TABLE t3 (a int PRIMARY KEY, c text NOT NULL, CONSTRAINT t3_c_key UNIQUE (c) DEFERRABLE);
		CREATE TABLE t4 (a int PRIMARY KEY, c text NOT NULL); CREATE UNIQUE INDEX t4_a_c ON t4 (a, c) WHERE a > 0;
		CREATE TABLE t5 (a int PRIMARY KEY, c text NOT NULL, d text NOT NULL, UNIQUE (c, d), UNIQUE (c));
		CREATE TABLE t6 (a int PRIMARY KEY, c text NOT NULL, d text); CREATE UNIQUE INDEX t6_c ON t6 (c) INCLUDE (d);
		CREATE TABLE t7 (a int PRIMARY KEY, c text); ALTER TABLE t7 REPLICA IDENTITY NOTHING;
		CREATE TABLE t8 (a int PRIMARY KEY, c text NOT NULL, x text); CREATE UNIQUE INDEX t8_c ON t8 (c) INCLUDE (x);
		ALTER TABLE t8 REPLICA IDENTITY USING INDEX t8_c;
		CREATE TABLE t9 (a int PRIMARY KEY, c text NOT NULL); CREATE UNIQUE INDEX "T9 c" ON t9 (c);
		CREATE TABLE t10 (a int PRIMARY KEY, c text NOT NULL); CREATE UNIQUE INDEX t10_lower ON t10 (lower(c)); CREATE UNIQUE INDEX t10_c ON t10 (c) WHERE c <> '';
		CREATE TABLE pt (a int, c text NOT NULL, PRIMARY KEY (a), UNIQUE (a, c)) PARTITION BY LIST (a);
		CREATE TABLE pt1 PARTITION OF pt FOR VALUES IN (1)`)
	tests := []struct {
		name, cache, want string
		refused           []string // indexes PostgreSQL must refuse as the identity
	}{
		{"not-null unique index", `{table: t1, key: "x:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.t1, so a delete could not name its key: run ALTER TABLE public.t1 REPLICA IDENTITY USING INDEX t1_c_key, or run ALTER TABLE public.t1 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through`, nil},
		{"nullable unique column", `{table: t2, key: "x:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.t2, so a delete could not name its key: run ALTER TABLE public.t2 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through`,
			[]string{"t2_c_key"}},
		{"deferrable unique constraint", `{table: t3, key: "x:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.t3, so a delete could not name its key: run ALTER TABLE public.t3 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through`,
			[]string{"t3_c_key"}},
		{"partial unique index", `{table: t4, key: "x:{a}:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.t4, so a delete could not name its key: run ALTER TABLE public.t4 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through`,
			[]string{"t4_a_c"}},
		{"expression and partial indexes name no row", `{table: t10, key: "x:{c}"}`,
			`config: caches.c.key: columns (c) do not name one row of public.t10: include the columns of a unique key such as (a)`,
			[]string{"t10_lower", "t10_c"}},
		{"the smallest index that holds the key", `{table: t5, key: "x:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.t5, so a delete could not name its key: run ALTER TABLE public.t5 REPLICA IDENTITY USING INDEX t5_c_key, or run ALTER TABLE public.t5 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through`, nil},
		{"index with a nullable INCLUDE column", `{table: t6, key: "x:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.t6, so a delete could not name its key: run ALTER TABLE public.t6 REPLICA IDENTITY USING INDEX t6_c, or run ALTER TABLE public.t6 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through`, nil},
		{"replica identity nothing", `{table: t7, key: "x:{a}"}`,
			`config: caches.c.key: column(s) a are not in the replica identity of public.t7 (it has none), so a delete could not name its key: run ALTER TABLE public.t7 REPLICA IDENTITY USING INDEX t7_pkey, or run ALTER TABLE public.t7 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or set sync: none if the cache only needs refreshes or read-through`, nil},
		{"INCLUDE columns are not sent", `{table: t8, key: "x:{c}:{x}"}`,
			`config: caches.c.key: column(s) x are not in the replica identity (c) of public.t8, so a delete could not name its key: run ALTER TABLE public.t8 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (c) only, or set sync: none if the cache only needs refreshes or read-through`, nil},
		{"quoted index name", `{table: t9, key: "x:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.t9, so a delete could not name its key: run ALTER TABLE public.t9 REPLICA IDENTITY USING INDEX "T9 c", or run ALTER TABLE public.t9 REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through`, nil},
		{"partitioned table", `{table: pt, key: "x:{a}:{c}"}`,
			`config: caches.c.key: column(s) c are not in the replica identity (a) of public.pt, so a delete could not name its key: run ALTER TABLE public.pt REPLICA IDENTITY USING INDEX pt_a_c_key, or run ALTER TABLE public.pt REPLICA IDENTITY FULL (the whole old row goes to the WAL), or key on columns of (a) only, or set sync: none if the cache only needs refreshes or read-through (on a partitioned table, set the replica identity of the table and of each partition)`, nil},
	}
	suggested := regexp.MustCompile(`run (ALTER TABLE \S+ REPLICA IDENTITY USING INDEX ("[^"]+"|\S+?)),`)
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check(t, db, tt.cache)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error:\n  %v\nwant:\n  %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error of several lines: %q", err)
			}
			if !strings.Contains(tt.cache, "sync: none") {
				none := strings.TrimSuffix(tt.cache, "}") + ", sync: none}"
				if nerr := check(t, db, none); nerr != nil && strings.Contains(tt.want, "set sync: none") {
					t.Errorf("with sync: none: %v", nerr)
				}
			}
			for _, ix := range tt.refused {
				table := regexp.MustCompile(`table: (\w+)`).FindStringSubmatch(tt.cache)[1]
				if _, err := db.Exec(ctx, `ALTER TABLE `+table+` REPLICA IDENTITY USING INDEX `+pgx.Identifier{ix}.Sanitize()); err == nil {
					t.Errorf("PostgreSQL took %s as the replica identity, which the advice left out", ix)
				}
			}
			if m := suggested.FindStringSubmatch(err.Error()); m != nil {
				if _, err := db.Exec(ctx, m[1]); err != nil {
					t.Fatalf("the suggestion %s: %v", m[1], err)
				}
				t.Logf("ran %s", m[1])
				if err := check(t, db, tt.cache); err != nil {
					t.Fatalf("after %s: %v", m[1], err)
				}
			}
		})
	}
}

// TestKeyNeverRenders: a key no row could have is refused at start: a
// placeholder (not the last) whose column's every value contains the text
// that follows it. Every other template over the same columns is accepted.
func TestKeyNeverRenders(t *testing.T) {
	db, url := world.Postgres(t).Database(t, "render", `CREATE DOMAIN uid AS uuid;
		CREATE TABLE r (n int PRIMARY KEY, at timestamptz, ts timestamp, d date, tm time, u uuid, du uid, b bytea,
			arr int[], net cidr, s text, iv interval);
		ALTER TABLE r REPLICA IDENTITY FULL`)
	tests := []struct{ key, want string }{
		{"ev:{at}:{n}", `config: caches.c.key: no row could be keyed: every value of column "at" (timestamp with time zone) but ±infinity contains ":", and with it the text that follows {at} in "ev:{at}:{n}"; put {at} last or follow it with text its values never contain`},
		{"ev:{ts} {n}", `config: caches.c.key: no row could be keyed: every value of column "ts" (timestamp without time zone) but ±infinity contains " ", and with it the text that follows {ts} in "ev:{ts} {n}"; put {ts} last or follow it with text its values never contain`},
		{"d:{d}-{n}", `config: caches.c.key: no row could be keyed: every value of column "d" (date) but ±infinity contains "-", and with it the text that follows {d} in "d:{d}-{n}"; put {d} last or follow it with text its values never contain`},
		{"t:{tm}:{n}", `config: caches.c.key: no row could be keyed: every value of column "tm" (time without time zone) contains ":", and with it the text that follows {tm} in "t:{tm}:{n}"; put {tm} last or follow it with text its values never contain`},
		{"u:{u}-{n}", `config: caches.c.key: no row could be keyed: every value of column "u" (uuid) contains "-", and with it the text that follows {u} in "u:{u}-{n}"; put {u} last or follow it with text its values never contain`},
		{"u:{du}-{n}", `config: caches.c.key: no row could be keyed: every value of column "du" (uid) contains "-", and with it the text that follows {du} in "u:{du}-{n}"; put {du} last or follow it with text its values never contain`},
		{"b:{b}x{n}", `config: caches.c.key: no row could be keyed: every value of column "b" (bytea) contains "\\x", and with it the text that follows {b} in "b:{b}x{n}"; put {b} last or follow it with text its values never contain`},
		{"a:{arr}}}{n}", `config: caches.c.key: no row could be keyed: every value of column "arr" (integer[]) contains "}", and with it the text that follows {arr} in "a:{arr}}}{n}"; put {arr} last or follow it with text its values never contain`},
		{"{net}/{n}", `config: caches.c.key: no row could be keyed: every value of column "net" (cidr) contains "/", and with it the text that follows {net} in "{net}/{n}"; put {net} last or follow it with text its values never contain`},
		// Keys some rows can have.
		{"ev:{n}:{at}", ""},  // last: anything goes
		{"ev:{at}/{n}", ""},  // no "/" in a timestamp
		{"ev:{at}::{n}", ""}, // "::" is in no timestamp
		{"d:{d}:{n}", ""},    // a date has no ":"
		{"u:{u}:{n}", ""},
		{"b:{b}:{n}", ""},
		{"a:{arr}:{n}", ""},
		{"s:{s}:{n}", ""}, // text: some values hold ":", others not
		{"i:{iv}:{n}", ""},
		{"{n}:{at}:{ts}:{d}:{tm}:{u}:{b}:{arr}:{net}:{s}", `config: caches.c.key: no row could be keyed: every value of column "at"`},
	}
	// What the refusals rest on: PostgreSQL prints such values, in the
	// session cachesync reads them in (pgsource.SessionParams), with that text.
	conn, err := pgsource.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ts, date := []string{"-", " ", ":"}, []string{"-"}
	for _, s := range []struct {
		expr  string
		texts []string
	}{
		{`'epoch'::timestamptz`, ts}, {`'0044-03-15 12:00 BC'::timestamptz`, ts}, {`'294276-12-31 23:59:59.999999'::timestamp`, ts},
		{`'4713-01-01 BC'::date`, date}, {`'5874897-12-31'::date`, date}, {`'00:00'::time`, []string{":"}}, {`'24:00-15:59'::timetz`, []string{":"}},
		{`gen_random_uuid()`, []string{"-"}}, {`''::bytea`, []string{`\x`}}, {`'{}'::int[]`, []string{"{", "}"}},
		{`'[0:0]={1}'::int[]`, []string{"{", "}"}}, {`'::/0'::cidr`, []string{"/"}}, {`'10.1.2.3/32'::cidr`, []string{"/"}},
	} {
		res := conn.ExecParams(context.Background(), "SELECT ("+s.expr+")::text", nil, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		for _, text := range s.texts {
			if v := string(res.Rows[0][0]); !strings.Contains(v, text) {
				t.Errorf("%s prints as %q, without %q", s.expr, v, text)
			}
		}
	}

	for _, tt := range tests {
		for _, sync := range []string{"changefeed", "none"} {
			err := check(t, db, fmt.Sprintf(`{table: r, key: %q, sync: %s}`, tt.key, sync))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("%s (sync: %s): %v", tt.key, sync, err)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Errorf("%s (sync: %s):\n  error %v\n  want  %s", tt.key, sync, err, tt.want)
			}
		}
	}
}
