package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/engine"
	"github.com/cachesync/cachesync/internal/status"
)

type statusCommand struct{}

func (c *statusCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("status", "status --config FILE [--json]\n\nPrints each cache's mode, keys, hit ratio, change-feed lag, write-behind queue\nand last error, and each Redis target when there are several. With http.addr in the config it asks the running daemon\n(GET /v1/status); otherwise, or when no daemon answers, it reads Redis and\nPostgreSQL itself (no hit ratios or errors then).")
	common := addCommonFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	cfg, err := config.LoadFile(common.config)
	if err != nil {
		return err
	}
	r, err := fromDaemon(ctx, cfg)
	if err != nil {
		if r, err = readStatus(ctx, cfg); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	status.WriteTable(os.Stdout, r)
	return nil
}

// fromDaemon asks the daemon of cfg for its status.
func fromDaemon(ctx context.Context, cfg *config.Config) (*status.Report, error) {
	if cfg.HTTP.Addr == "" {
		return nil, fmt.Errorf("no http.addr")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	client, scheme, err := daemonClient(cfg.HTTP.TLS)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+cfg.HTTP.Addr+"/v1/status", nil)
	if err != nil {
		return nil, err
	}
	for _, k := range cfg.HTTP.Keys {
		for _, sc := range k.Scopes {
			if sc == "read" {
				req.Header.Set("X-API-Key", k.Key)
			}
		}
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return nil, fmt.Errorf("GET /v1/status: %s: %s", res.Status, b)
	}
	var r status.Report
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		return nil, err
	}
	return &r, nil
}

// daemonClient is the HTTP client that asks the daemon, and its scheme:
// with http.tls, HTTPS that accepts only the certificate the config names
// (the daemon's own, whatever names it holds: http.addr may be 0.0.0.0).
func daemonClient(t config.HTTPTLS) (*http.Client, string, error) {
	if !t.Enabled() {
		return http.DefaultClient, "http", nil
	}
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile) // (checked already by config.Load)
	if err != nil {
		return nil, "", fmt.Errorf("http.tls.cert_file: %w", err)
	}
	own := pair.Certificate[0]
	tc := &tls.Config{
		InsecureSkipVerify: true, // replaced by the comparison below, which is stricter
		VerifyPeerCertificate: func(certs [][]byte, _ [][]*x509.Certificate) error {
			if len(certs) == 0 || !bytes.Equal(certs[0], own) {
				return errors.New("the server's certificate is not http.tls.cert_file")
			}
			return nil
		},
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, "https", nil
}

// openTimeout bounds how long status waits to connect to Redis and the
// sources when it reads them itself: a server that accepts connections
// but does not answer would hold it without end (the collector's own
// deadlines bound the reads once connected).
const openTimeout = 10 * time.Second

// readStatus reads what it can without the daemon.
func readStatus(ctx context.Context, cfg *config.Config) (*status.Report, error) {
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	rc, err := cfg.RedisClient()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	// The first target's engine, as the daemon's: caches of other targets
	// may share its key names.
	first := cfg
	if len(cfg.Targets) > 1 {
		first = cfg.ForTarget(cfg.Targets[0].Name)
	}
	api, err := engine.Open(octx, first, engine.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	defer api.Close()
	// Not the daemon's client: its counters are empty, so leave them out.
	s := status.Sources{Config: cfg, Redis: rc, API: api, Outside: true}
	if len(cfg.Targets) > 1 {
		// A target that cannot be reached is reported down.
		s.Targets = []status.TargetClient{func() (rueidis.Client, error) { return rc, nil }}
		for _, tc := range cfg.Targets[1:] {
			c, err := tc.Client()
			if c != nil {
				defer c.Close()
			}
			s.Targets = append(s.Targets, func() (rueidis.Client, error) { return c, err })
		}
	}
	return status.NewCollector(s).Collect(ctx)
}
