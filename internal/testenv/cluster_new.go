package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// NewCluster starts n primaries sharing the hash slots evenly, each
// keeping its files in dir/node-N, and waits until every node reports the
// cluster ok: StartCluster for callers outside tests (benchmarks), who
// must call Stop.
func NewCluster(dir string, n int) (*Cluster, error) {
	c := &Cluster{}
	for i := range n {
		node := filepath.Join(dir, "node-"+strconv.Itoa(i+1))
		if err := os.MkdirAll(node, 0o755); err != nil {
			return nil, errors.Join(fmt.Errorf("cluster node dir: %w", err), c.Stop())
		}
		r, err := NewRedis(node, clusterNode)
		if err != nil {
			return nil, errors.Join(err, c.Stop())
		}
		c.Nodes = append(c.Nodes, r)
	}
	if err := c.form(n); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	return c, nil
}

// Stop stops every node of a Cluster from NewCluster.
func (c *Cluster) Stop() error {
	var errs []error
	for _, r := range c.Nodes {
		errs = append(errs, r.Stop())
	}
	return errors.Join(errs...)
}
