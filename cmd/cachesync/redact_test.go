package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/internal/testenv"
	"github.com/cachesync/cachesync/internal/testenv/world"
)

// Connection strings with passwords that are wrong in some way, one a line;
// every run of letters and digits in a password holds "Pw" and two digits,
// so that passwordRE finds a password shown whole or in part.
const (
	redactRedisURLs = `redis://:BadPortPw11@127.0.0.1:99999x/0
redis://user:EscPw12%zzEscPw12@127.0.0.1:6379/0
redis://:HostEscPw13@127.0.0.%zz1:6379/0
rediss://:SpacePw14 SpacePw14@127.0.0.1:6379/0
unix://:AtPw15@AtPw15@/tmp/redis.sock%zz
redis://:SlashPw16/SlashPw16@127.0.0.1:6379/0
redis://:1234/SlashPw17@127.0.0.1:6379/0
redis://user:1234#HashPw18@127.0.0.1:6379/0
user:NoSchemePw19@127.0.0.1:6379
redis://OnlyPw20@127.0.0.1:99999x/0
${CACHESYNC_REDACT_URL}`
	redactPostgresURLs = `postgres://u:PgPortPw41@127.0.0.1:99999x/db
postgresql://u:PgEscPw42%zz@127.0.0.1:5432/db
postgres://u:PgSlashPw43/PgSlashPw43@127.0.0.1:5432/db
postgres://u:1234/PgSlashPw44@127.0.0.1:5432/db
postgres://u:PgAtPw45@PgAtPw45@127.0.0.1:5432/db
postgres://127.0.0.1/db?password=PgAmpPw46&PgAmpPw46&sslmode=disable
host=127.0.0.1 password=PgKvPw47 PgKvPw47 port=5432
host=127.0.0.1 password='PgKvPw48 port=5432`
)

var passwordRE = regexp.MustCompile(`Pw[0-9]{2}`)

// TestRedactPasswordsInErrors gives every command that reads a config one
// whose Redis or PostgreSQL URL is wrong and holds a password: each fails
// with one line on stderr naming the field, and no output shows the password.
func TestRedactPasswordsInErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := append(os.Environ(), "CACHESYNC_REDACT_URL=redis://:EnvPw21@127.0.0.1:99999x/0")
	// A Redis that answers, so that a PostgreSQL URL the config takes is
	// connected to (where a driver's error could show it) and fails there.
	redisURL, pgURL := testenv.StartRedis(t).URL(), "postgres://u@127.0.0.1:1/db"
	const good = "name: redact\nredis: {url: '%s'}\nsources:\n  db: {url: '%s'}\ncaches:\n  prices: {table: inventory, key: \"price:{item}\"}\n"
	quote := func(s string) string { return strings.ReplaceAll(s, "'", "''") }
	n := 0
	for _, set := range []struct{ field, urls string }{{"redis.url", redactRedisURLs}, {"sources.db.url", redactPostgresURLs}} {
		for _, u := range strings.Split(set.urls, "\n") {
			yaml := fmt.Sprintf(good, quote(u), pgURL)
			if set.field != "redis.url" {
				yaml = fmt.Sprintf(good, redisURL, quote(u))
			}
			path := filepath.Join(dir, strconv.Itoa(n)+".yaml")
			n++
			if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			requireSecretFailure(t, env, path, fmt.Sprintf("%s = %s", set.field, u), set.field)
		}
	}
}

// requireSecretFailure runs every command that reads the config at path,
// with env (nil: this process's), and requires each to exit 1 with one
// line on stderr that says want, and no output to show a password
// (passwordRE); what names the case in failures.
func requireSecretFailure(t *testing.T, env []string, path, what, want string) {
	t.Helper()
	for _, args := range [][]string{{"run", "--config", path}, {"status", "--config", path}, {"check", "--config", path}, {"resync", "--config", path, "prices"}} {
		code, stdout, stderr := world.CLI(t, env, args...)
		lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
		if passwordRE.MatchString(stdout + stderr) {
			t.Errorf("cachesync %s, %s: the output shows a password:\nstdout: %s\nstderr: %s", args[0], what, stdout, stderr)
		}
		if code != 1 || len(lines) != 1 || !strings.Contains(lines[0], want) {
			t.Errorf("cachesync %s, %s: exit %d, stderr %q; want 1 and one line saying %s", args[0], what, code, stderr, want)
		}
	}
}

// TestRedactPasswordFile: a password read from redis.password_file that
// Redis refuses fails every command with one line that names Redis and
// shows neither that password nor the right one.
func TestRedactPasswordFile(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	r.SetUser(t, "app", "on", ">RightPw71", "~*", "&*", "+@all")
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte("WrongPw72\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf("name: redact\nredis: {url: 'redis://app@%s/0', password_file: '%s'}\nsources:\n  db: {url: 'postgres://u@127.0.0.1:1/db'}\ncaches:\n  prices: {table: inventory, key: \"price:{item}\"}\n", r.Addr, pwFile)
	path := filepath.Join(dir, "cachesync.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	requireSecretFailure(t, nil, path, "a wrong password in redis.password_file", "WRONGPASS")
}
