package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/rueidis"

	"github.com/cachesync/cachesync/internal/testenv"
)

// clusterThroughput is item 14: change throughput into a Redis Cluster of
// three primaries beside one Redis node, on the same backlogs: 1a's
// batched updates, written while no daemon runs, then read by the node's
// daemon and by the Cluster's, one after the other, each timed from its
// process start to the last change visible (as 1a-backlog is); twice, each
// target reading one backlog first and the other second; beside
// pg_recvlogical and the bare receiver reading the same WAL.
type clusterThroughput struct {
	about
	Primaries           int
	Rounds              int           // backlogs
	Rows, Txns, TxnSize int           // of each backlog
	WriteTime           time.Duration // the backlogs' writes
	Fill                time.Duration // the Cluster's first daemon: process start → caught up (a rebuild, untimed otherwise)
	Node, Cluster       catchUp
	ceilings            // over the WAL of every backlog
}

// catchUp is one target's daemon reading the backlogs.
type catchUp struct {
	Rows      int           // read, in every backlog
	Elapsed   time.Duration // daemon process start → a backlog's last change visible, summed
	Rate      float64       // Rows ÷ Elapsed
	ByOrder   [2]float64    // its rate on the backlog it read first, and on the one it read second
	DaemonCPU time.Duration
	SenderCPU time.Duration // its walsender's
	Redis     redisStats    // every node's, summed
	Daemon    procStats     // the higher peak RSS of its runs
}

// clusterName is the config of the Cluster's daemon: a slot, publication
// and state of its own.
const clusterName = configName + "_cluster"

//go:embed step_cluster.md
var clusterText string

func (s clusterThroughput) Text() string { return clusterText }

func (s clusterThroughput) Results() []row {
	n, c := s.Node, s.Cluster
	return []row{
		{ID: s.ID, What: fmt.Sprintf("Change throughput into a Redis Cluster of %d primaries: the 1a workload (%s updates in %s-row transactions) as a backlog, daemon process start → last change visible; %d backlogs, each target reading one first and the other second",
			s.Primaries, count(s.Rows), count(s.TxnSize), s.Rounds),
			Got:     c.got(),
			Ceiling: "one Redis node, the same backlogs, same run: " + n.got(),
			Ratio:   ratio(c.Rate, n.Rate), Target: "report", Met: "—"},
		{ID: s.ID, What: fmt.Sprintf("Same, against pg_recvlogical reading the same WAL (one node: %s of it)", ratio(n.Rate, s.CeilRate)),
			Got:     num(c.Rate) + " rows/s",
			Ceiling: fmt.Sprintf("pg_recvlogical: %s rows/s (%s)", num(s.CeilRate), secs(s.CeilTime)),
			Ratio:   ratio(c.Rate, s.CeilRate), Target: "report", Met: "—"},
		rssRow(s.ID+" one node catch-up", n.Daemon),
		rssRow(s.ID+" Cluster catch-up", c.Daemon),
	}
}

// got is the target's figure in the Results table.
func (c catchUp) got() string {
	return fmt.Sprintf("%s rows/s (%s; read first %s, second %s)", num(c.Rate), secs(c.Elapsed), num(c.ByOrder[0]), num(c.ByOrder[1]))
}

// CostsRows are the two daemons' lines of the step's table of "Where the
// time goes".
func (s clusterThroughput) CostsRows() []string {
	return []string{s.Node.row("one node"), s.Cluster.row(fmt.Sprintf("Cluster, %d primaries", s.Primaries))}
}

func (c catchUp) row(name string) string {
	return cells(name, fmt.Sprintf("%s (%s rows/s)", secs(c.Elapsed), num(c.Rate)),
		fmt.Sprintf("%s, %s", num(c.ByOrder[0]), num(c.ByOrder[1])),
		fmt.Sprintf("%s (%.1f µs/row)", secs(c.DaemonCPU), perRow(c.DaemonCPU, c.Rows)), secs(c.SenderCPU),
		fmt.Sprintf("%s (%.1f µs/row)", secs(c.Redis.CPU), perRow(c.Redis.CPU, c.Rows)),
		fmt.Sprintf("%s (%.0f)", count(int(c.Redis.Flushes)), float64(c.Redis.Sets)/max(1, float64(c.Redis.Flushes))))
}

// Slower tells whether the Cluster's daemon read the backlogs more than
// 5% more slowly than the node's, Faster whether more than 5% faster.
func (s clusterThroughput) Slower() bool { return s.Cluster.Rate < 0.95*s.Node.Rate }
func (s clusterThroughput) Faster() bool { return s.Cluster.Rate > 1.05*s.Node.Rate }

// DecodeBound tells whether both daemons read the backlogs at 0.9 of
// pg_recvlogical's rate or faster: PostgreSQL's decoding then set the
// pace, whatever the target.
func (s clusterThroughput) DecodeBound() bool {
	return min(s.Node.Rate, s.Cluster.Rate) >= 0.9*s.CeilRate
}

// ClusterName is the config name of the Cluster's daemon.
func (clusterThroughput) ClusterName() string { return clusterName }

func (s clusterThroughput) Run(ctx context.Context, e *env) (step, error) {
	s.Primaries, s.Rounds, s.TxnSize = 3, 2, e.sz.TxnSize
	s.Txns = e.sz.BatchedRows / s.TxnSize
	s.Rows = s.Txns * s.TxnSize
	cl, stop, err := e.startCluster(ctx, s.Primaries)
	if err != nil {
		return nil, err
	}
	defer stop()
	// The Cluster's daemon fills it (a rebuild from a snapshot), streams
	// until caught up and stops: its cache is then as the node's.
	if _, err := e.startDaemon(cl, s.ID+"-cluster-fill"); err != nil {
		return nil, err
	}
	if err := e.caughtUp(ctx); err != nil {
		return nil, err
	}
	s.Fill = time.Since(e.daemon.started)
	if _, err := e.stopDaemon(); err != nil {
		return nil, err
	}

	if err := e.createCeilingSlots(ctx); err != nil {
		return nil, err
	}
	defer e.dropCeilingSlots(ctx)
	type reader struct {
		c    *catchUp
		to   target
		name string
	}
	readers := []reader{{&s.Node, e.node, "node"}, {&s.Cluster, cl, "cluster"}}
	var end pglogrepl.LSN
	for round := range s.Rounds {
		first, last, err := e.writeRows(ctx, 1, s.Txns, batchedUpdate(s.TxnSize))
		if err != nil {
			return nil, err
		}
		s.WriteTime += last.Sub(first)
		var mark int64
		if mark, end, _, err = e.endMark(ctx); err != nil {
			return nil, err
		}
		for order, r := range readers {
			if err := r.c.run(ctx, e, r.to, fmt.Sprintf("%s-%s-%d", s.ID, r.name, round+1), mark, s.Rows, order); err != nil {
				return nil, err
			}
		}
		slices.Reverse(readers) // the other reads first next time
	}
	if err := s.ceilings.read(ctx, e, s.Rounds*s.Rows, end); err != nil {
		return nil, err
	}
	return s, e.settle(ctx)
}

// run starts a daemon into to and times it from its process start until
// mark, the last change of a backlog of rows changes, is visible there;
// order is 0 when it reads the backlog first, 1 when second.
func (c *catchUp) run(ctx context.Context, e *env, to target, name string, mark int64, rows, order int) error {
	rs0, err := nodeStats(ctx, to.nodes...)
	if err != nil {
		return err
	}
	d, err := e.startDaemon(to, name)
	if err != nil {
		return err
	}
	stopPerf := e.startPerf(name)
	visible, err := e.waitMark(ctx, to, mark, 10*time.Minute)
	if err != nil {
		return err
	}
	c.DaemonCPU += e.daemonCPU()
	c.SenderCPU += e.senderCPU(ctx, to.slot)
	stopPerf()
	rs1, err := nodeStats(ctx, to.nodes...)
	if err != nil {
		return err
	}
	c.Redis = c.Redis.plus(rs1.sub(rs0))
	elapsed := visible.Sub(d.started)
	c.Rows, c.Elapsed = c.Rows+rows, c.Elapsed+elapsed
	c.Rate, c.ByOrder[order] = float64(c.Rows)/c.Elapsed.Seconds(), float64(rows)/elapsed.Seconds()
	ps, err := e.stopStreaming()
	c.Daemon.HWM = max(c.Daemon.HWM, ps.HWM)
	return err
}

// startCluster starts a Redis Cluster of n primaries in a new directory of
// the work directory (a node started in an old one would remember its
// Cluster) and returns it as a target of the daemon (config clusterName);
// stop stops the daemon if it still writes there, drops its slot and
// publication and stops the Cluster.
func (e *env) startCluster(ctx context.Context, n int) (to target, stop func(), err error) {
	dir, err := os.MkdirTemp(e.dir, "cluster-")
	if err != nil {
		return to, nil, err
	}
	c, err := testenv.NewCluster(dir, n)
	if err != nil {
		return to, nil, err
	}
	var clients []rueidis.Client
	stop = func() {
		if e.daemon != nil && e.daemon.to.slot == to.slot {
			e.stopDaemon()
		}
		for _, cl := range clients {
			cl.Close()
		}
		if to.slot != "" {
			ctx := context.WithoutCancel(ctx)
			e.dropSlot(ctx, to.slot)
			if _, err := e.db.Exec(ctx, "DROP PUBLICATION IF EXISTS cachesync_"+clusterName); err != nil {
				fmt.Println("   drop publication:", err)
			}
		}
		if err := c.Stop(); err != nil {
			fmt.Println("   stop cluster:", err)
		}
	}
	// A client of the Cluster (rueidis finds the others from one node),
	// and one of each node alone.
	all, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{c.Nodes[0].Addr}, DisableCache: true})
	if err != nil {
		stop()
		return to, nil, err
	}
	clients = append(clients, all)
	if all.Mode() != rueidis.ClientModeCluster {
		stop()
		return to, nil, errors.New("the Cluster's client is not a Cluster client")
	}
	var nodes []rueidis.Client
	for _, node := range c.Nodes {
		cl, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{node.Addr}, ForceSingleClient: true, DisableCache: true})
		if err != nil {
			stop()
			return to, nil, err
		}
		clients, nodes = append(clients, cl), append(nodes, cl)
	}
	if to, err = e.newTarget(clusterName, c.URL(), all, nodes...); err != nil {
		stop()
		return to, nil, err
	}
	return to, stop, nil
}
