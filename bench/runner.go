package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A step is one part of the benchmark: it measures, and brings its figures
// to the report.
type step interface {
	// info tells the runner the step's id and what it needs (about, which
	// every step embeds).
	info() about
	// Run measures and returns the step holding its figures. It works on a
	// copy of the step (a value receiver), so the runner can run a step
	// again and keep the quieter attempt.
	Run(ctx context.Context, e *env) (step, error)
	// Results are the step's lines of the report's Results table.
	Results() []row
	// Text is the step's report template (its step_*.md): what it defines
	// as "notes", "reading", "costs" and "method" goes into the report's
	// sections of those names (report.go).
	Text() string
}

// about is what the runner knows of a step.
type about struct {
	ID    string   // its -steps name (ASCII) and its # in the report
	Title string   // printed when it starts
	Needs []string // the steps that must run before it
	// Timed is set on the steps that measure time: such a step disturbed
	// by other load is run once more, and its noise is reported.
	Timed bool
	// Late is set on a timed step that comes late in the run and is run
	// again when disturbed however long the run has taken.
	Late bool
}

func (a about) info() about { return a }

// Results is the default of a step that brings no row.
func (about) Results() []row { return nil }

// steps are the benchmark's steps in the order they run.
func steps() []step {
	table := []string{"load"}
	// The backfill fills the cache and leaves the daemon's slot and state,
	// without which a daemon rebuilds the cache instead of streaming.
	filled := []string{"3"}
	return []step{
		loadTable{about: about{ID: "load", Title: "load"}},
		backfill{about: about{ID: "3", Title: "3. backfill", Needs: table, Timed: true}},
		throughput{about: about{ID: "1a", Title: "1a. batched transactions, daemon running", Needs: filled, Timed: true}, Batched: true},
		throughput{about: about{ID: "1a-backlog", Title: "1a-backlog. batched transactions, backlog catch-up", Needs: filled, Timed: true}, Batched: true, Backlog: true},
		throughput{about: about{ID: "1b", Title: "1b. single-row transactions, daemon running", Needs: filled, Timed: true}},
		throughput{about: about{ID: "1b-backlog", Title: "1b-backlog. single-row transactions, backlog catch-up", Needs: filled, Timed: true}, Backlog: true},
		clusterThroughput{about: about{ID: "14", Title: "14. batched transactions, backlog catch-up: a 3-primary Redis Cluster beside one node", Needs: filled, Timed: true}},
		lag{about: about{ID: "2", Title: "2. lag at a steady rate", Needs: filled, Timed: true}},
		// The hits come late and take half a minute: they may run again
		// however long the run has taken.
		hits{about: about{ID: "5", Title: "5, 6, 10, 12, 16. read path: hits through the Go API, a bare rueidis client and HTTP, with the consistency check, with l1", Needs: filled, Timed: true, Late: true}},
		l1Delay{about: about{ID: "16", Title: "16. l1: commit to every process's copy dropped", Needs: filled, Timed: true}},
		takeover{about: about{ID: "13", Title: "13. takeover: kill -9 of the streaming daemon, a standby waiting", Needs: filled, Timed: true}},
		storm{about: about{ID: "7", Title: "7. read path: miss storm (database queries)", Needs: table}}, // counts queries, not time
		writeBehind{about: about{ID: "8", Title: "8. write-behind: PutBehind ingest and drain into PostgreSQL", Timed: true}},
		refreshStep{about: about{ID: "9", Title: "9. refresh: mass expiry, delay, reader misses", Timed: true}},
		consistency{about: about{ID: "check", Title: "consistency check", Needs: filled}},
		checkRate{about: about{ID: "11", Title: "11. cachesync check: full-scan rate", Needs: []string{"check"}, Timed: true}},
		recipes{about: about{ID: "15", Title: "15. recipes: rate-limit decisions and lock acquire+release beside bare EVALSHA round trips", Timed: true}},
	}
}

// stepsUsage is the help of -steps.
var stepsUsage = "run only these comma-separated `steps` and those they need (e.g. 8 or 5,7), for trying one out; writes no report unless -out is given. " +
	"Steps: " + strings.Join(stepIDs(), ", ") + ". Step 5 measures 6, 10 and 12 too; 1a-backlog and 1b-backlog were 1a′ and 1b′."

func stepIDs() []string {
	var ids []string
	for _, s := range steps() {
		ids = append(ids, s.info().ID)
	}
	return ids
}

// A row is one line of the report's Results table.
type row struct {
	ID, What, Got, Ceiling, Ratio, Target, Met string
}

func (r row) String() string { return cells(r.ID, r.What, r.Got, r.Ceiling, r.Ratio, r.Target, r.Met) }

// cells is a line of a Markdown table.
func cells(cs ...string) string {
	s := "|"
	for _, c := range cs {
		if c != "" {
			s += " " + c
		}
		s += " |"
	}
	return s
}

// item is the number r's # starts with: the item it measures.
func (r row) item() int {
	n, _ := strconv.Atoi(strings.TrimRightFunc(r.ID, func(c rune) bool { return c < '0' || c > '9' }))
	return n
}

// runner runs the steps, each once the machine is quiet, and keeps each
// step's quieter attempt.
type runner struct {
	steps   []step
	done    []outcome
	waited  time.Duration // spent waiting for other load to pass
	loadAvg string        // /proc/loadavg at the start
}

// outcome is a step's kept attempt.
type outcome struct {
	step     step
	other    float64 // the share of the machine's CPU other processes used meanwhile
	attempts int
}

// newRunner runs every step, or with only (-steps) the steps it names and
// the steps they need.
func newRunner(only string) (*runner, error) {
	all := steps()
	if only == "" {
		return &runner{steps: all}, nil
	}
	want := map[string]bool{}
	for _, id := range strings.Split(only, ",") {
		id = strings.TrimSpace(id)
		if !slices.Contains(stepIDs(), id) {
			return nil, fmt.Errorf("-steps: no step %q; the steps are %s", id, strings.Join(stepIDs(), ", "))
		}
		want[id] = true
	}
	r := &runner{}
	for i := len(all) - 1; i >= 0; i-- { // a step needs steps before it
		if a := all[i].info(); want[a.ID] {
			for _, n := range a.Needs {
				want[n] = true
			}
			r.steps = append([]step{all[i]}, r.steps...)
		}
	}
	return r, nil
}

// run sets the environment up and runs the steps in order.
func (r *runner) run(ctx context.Context, e *env) error {
	if err := e.setup(ctx); err != nil {
		return err
	}
	m := e.machine
	fmt.Printf("machine: %s, %d cores, %s RAM, %s, %s, Redis %s, PostgreSQL %s\n", m.CPU, m.Cores, m.RAM, m.Kernel, m.Go, m.Redis, m.Postgres)
	if e.quick {
		fmt.Println("quick mode: sizes are 10x smaller")
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.loadAvg = strings.Join(strings.Fields(string(data))[:3], " ")
	}
	// A timed step during which other processes took more than 10% of the
	// machine is run once more while the run is young enough, and the
	// quieter attempt is kept.
	const noisy, retryBefore = 0.10, 6 * time.Minute
	runStart := time.Now()
	for _, s := range r.steps {
		a := s.info()
		kept := outcome{other: -1}
		for attempt := 1; ; attempt++ {
			fmt.Printf("\n== %s", a.Title)
			if attempt > 1 {
				fmt.Printf(" (attempt %d)", attempt)
			}
			fmt.Println()
			r.waitQuiet(ctx)
			start, cpu := time.Now(), snapCPU()
			got, err := s.Run(ctx, e)
			if err != nil {
				return fmt.Errorf("%s: %w", a.Title, err)
			}
			d, share := other(cpu, snapCPU())
			fmt.Printf("   (step took %s; other processes on the machine used %s of CPU meanwhile, %.0f%% of its capacity)\n",
				time.Since(start).Round(100*time.Millisecond), d.Round(10*time.Millisecond), 100*share)
			kept.attempts = attempt
			if kept.other < 0 || share < kept.other {
				kept.step, kept.other = got, share
			}
			if !a.Timed || share <= noisy || attempt >= 2 || (time.Since(runStart) > retryBefore && !a.Late) {
				break
			}
			fmt.Println("   other load disturbed this step; running it again")
		}
		r.done = append(r.done, kept)
		if a.Timed && kept.other > noisy {
			fmt.Printf("   kept the attempt with the least other load (%.0f%%)\n", 100*kept.other)
		}
		r.show(e, kept.step)
	}
	return nil
}

// outcome returns the kept attempt of step id (the zero outcome if it did
// not run).
func (r *runner) outcome(id string) outcome {
	for _, o := range r.done {
		if o.step.info().ID == id {
			return o
		}
	}
	return outcome{}
}

// ---- other load on the machine ----

// cpuSnap is the machine's busy CPU time and the part of it spent by this
// program and its descendants (Redis, PostgreSQL and its backends, the
// daemon, pg_recvlogical), alive or already reaped.
type cpuSnap struct {
	at         time.Time
	busy, ours time.Duration
}

func snapCPU() cpuSnap {
	s := cpuSnap{at: time.Now()}
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		f := strings.Fields(line)
		for i := 1; i <= 3 && i < len(f); i++ { // user, nice, system
			n, _ := strconv.ParseInt(f[i], 10, 64)
			s.busy += time.Duration(n) * time.Second / 100
		}
	}
	type proc struct {
		ppid int
		cpu  time.Duration
	}
	procs := map[int]proc{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := procStat(pid)
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		var ticks int64
		for _, k := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
			n, _ := strconv.ParseInt(f[k], 10, 64)
			ticks += n
		}
		procs[pid] = proc{ppid, time.Duration(ticks) * time.Second / 100}
	}
	self := os.Getpid()
	for pid, p := range procs {
		for q, depth := pid, 0; q > 1 && depth < 32; q, depth = procs[q].ppid, depth+1 {
			if q == self {
				s.ours += p.cpu
				break
			}
		}
	}
	return s
}

// other returns the CPU time other processes used between a and b, and its
// share of the machine's capacity.
func other(a, b cpuSnap) (time.Duration, float64) {
	d := max(0, (b.busy-a.busy)-(b.ours-a.ours))
	wall := b.at.Sub(a.at)
	if wall <= 0 {
		return d, 0
	}
	return d, d.Seconds() / (wall.Seconds() * float64(runtime.NumCPU()))
}

// waitQuiet waits, within the run's budget, until other processes use less
// than 10% of one core, so a step does not start in the middle of someone
// else's load spike.
func (r *runner) waitQuiet(ctx context.Context) {
	const maxTotal = 3 * time.Minute
	start := time.Now()
	announced := false
	for r.waited < maxTotal {
		a := snapCPU()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		d, share := other(a, snapCPU())
		if d < 100*time.Millisecond {
			break
		}
		if !announced {
			fmt.Printf("   waiting for the machine to quiet down: other processes use %.0f%% of it\n", 100*share)
			announced = true
		}
		r.waited += time.Since(a.at)
		if time.Since(start) > time.Minute {
			break
		}
	}
}
