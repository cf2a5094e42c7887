package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ffmpegChild is one supervised ffmpeg child process fed on stdin and read
// on stdout: what the audio and the video transcoders share. The transcoder
// says how to start it and how to talk to it; superviseFFmpeg keeps it
// running.
type ffmpegChild struct {
	what     string // "audio transcoder", for logs and errors
	ffmpeg   string
	args     []string
	log      *slog.Logger
	restarts prometheus.Counter
	running  prometheus.Gauge
	pid      *atomic.Int64
	// started and stopped reset the transcoder's per-process state; stopped
	// also drops what was queued for the dead process.
	started, stopped func()
	feed             func(w io.Writer, stop <-chan struct{})
	read             func(r io.Reader) error
	// onFail is the log line when the process ends: what viewers get meanwhile.
	onFail string
}

// superviseFFmpeg runs c until ctx ends, restarting it with backoff: 100 ms
// doubling to 5 s, back to 100 ms after a run of 10 s or more. A missing
// ffmpeg is retried the same way (it may be installed meanwhile).
func superviseFFmpeg(ctx context.Context, c ffmpegChild) {
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			c.restarts.Inc()
		}
		started := time.Now()
		err := runFFmpeg(ctx, c)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		c.log.Error(c.onFail, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// runFFmpeg runs one ffmpeg until it exits or ctx ends.
func runFFmpeg(ctx context.Context, c ffmpegChild) error {
	path, err := exec.LookPath(c.ffmpeg)
	if err != nil {
		return fmt.Errorf("%s: ffmpeg not found (install Debian's ffmpeg): %w", c.what, err)
	}
	cmd := exec.CommandContext(ctx, path, c.args...)
	cmd.WaitDelay = 2 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr := &tailBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start ffmpeg: %w", c.what, err)
	}
	c.started()
	c.pid.Store(int64(cmd.Process.Pid))
	c.running.Inc()
	c.log.Info(c.what+" started", "pid", cmd.Process.Pid)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer stdin.Close()
		c.feed(stdin, stop)
	})
	readErr := c.read(stdout)
	close(stop)
	wg.Wait()
	waitErr := cmd.Wait()

	c.pid.Store(0)
	c.stopped()
	c.running.Dec()
	return errors.Join(readErr, waitErr, stderr.err())
}
