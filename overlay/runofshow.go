package overlay

import (
	"context"
	"fmt"
	"time"
)

// TimedCue is one step of a run-of-show: a cue fired OffsetMS after the
// show's start.
type TimedCue struct {
	OffsetMS int64      `json:"offset_ms"`
	Cue      CueRequest `json:"cue"`
}

// RunOfShow is a loaded list of timed cues and whether it runs.
type RunOfShow struct {
	Cues      []TimedCue `json:"cues"`
	Running   bool       `json:"running"`
	StartedAt time.Time  `json:"started_at,omitzero"`
	Fired     int        `json:"fired"`
}

// MaxRunOfShow bounds a run-of-show's length.
const MaxRunOfShow = 500

// LoadRunOfShow replaces the run-of-show (stopping one that runs). Offsets
// must not decrease and each cue must pass the checks that need neither the
// catalog nor the show (checkCue: a known type, its fields in range);
// products are checked when each cue fires, since stock and the catalog
// change during a show.
func (s *Show) LoadRunOfShow(ctx context.Context, cues []TimedCue) (RunOfShow, error) {
	if len(cues) == 0 || len(cues) > MaxRunOfShow {
		return RunOfShow{}, fmt.Errorf("%w: a run-of-show has 1 to %d cues", ErrBadCue, MaxRunOfShow)
	}
	last := int64(0)
	for i, c := range cues {
		switch c.Cue.Type {
		case CueShowCard, CueHideCard, CueSaleStart, CueSaleEnd, CueCustom:
		default:
			return RunOfShow{}, fmt.Errorf("%w: cue %d: unknown type %q", ErrBadCue, i+1, c.Cue.Type)
		}
		if err := checkCue(c.Cue); err != nil {
			return RunOfShow{}, fmt.Errorf("cue %d: %w", i+1, err)
		}
		if c.OffsetMS < last || c.OffsetMS > 24*3600*1000 {
			return RunOfShow{}, fmt.Errorf("%w: cue %d: offset_ms must not decrease and stay within 24 h", ErrBadCue, i+1)
		}
		if c.Cue.ClickTime != 0 {
			return RunOfShow{}, fmt.Errorf("%w: cue %d: a run-of-show cue has no click time", ErrBadCue, i+1)
		}
		last = c.OffsetMS
	}
	return s.changeRun(ctx, RunOfShow{Cues: append([]TimedCue(nil), cues...)})
}

// StartRunOfShow fires the loaded cues at their offsets from now. Starting
// again restarts from the first cue.
func (s *Show) StartRunOfShow(ctx context.Context) (RunOfShow, error) {
	run := s.RunOfShowState()
	if len(run.Cues) == 0 {
		return run, fmt.Errorf("%w: no run-of-show loaded", ErrBadCue)
	}
	run.Running, run.StartedAt, run.Fired = true, s.cfg.Now(), 0
	return s.changeRun(ctx, run)
}

// StopRunOfShow stops the cues that have not fired yet.
func (s *Show) StopRunOfShow(ctx context.Context) (RunOfShow, error) {
	run := s.RunOfShowState()
	run.Running = false
	return s.changeRun(ctx, run)
}

// changeRun stores run as the run-of-show, stops the one running and starts
// run if it runs.
func (s *Show) changeRun(ctx context.Context, run RunOfShow) (RunOfShow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state()
	st.Run = run
	if _, err := s.change(ctx, ShowChange{State: st}, s.cfg.Now()); err != nil {
		return s.run, err
	}
	s.stopRun()
	s.run = run
	if run.Running {
		s.startRun()
	}
	return s.run, nil
}

// RunOfShowState reports the loaded run-of-show and its progress.
func (s *Show) RunOfShowState() RunOfShow {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run
}

// startRun fires s.run's cues from the first not fired yet; s.mu must be
// held. Cues whose time has passed (after a restart) fire at once, in order.
func (s *Show) startRun() {
	stop := make(chan struct{})
	s.runStop = stop
	go s.runCues(s.run.Cues, s.run.Fired, s.run.StartedAt, stop)
}

// stopRun stops the cues' goroutine; s.mu must be held.
func (s *Show) stopRun() {
	if s.runStop != nil {
		close(s.runStop)
		s.runStop = nil
	}
}

func (s *Show) runCues(cues []TimedCue, from int, start time.Time, stop chan struct{}) {
	for i := from; i < len(cues); i++ {
		c := cues[i]
		timer := time.NewTimer(start.Add(time.Duration(c.OffsetMS) * time.Millisecond).Sub(s.cfg.Now()))
		select {
		case <-stop:
			timer.Stop()
			return
		case <-s.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := s.Cue(ctx, c.Cue); err != nil {
			s.cfg.Log.Warn("run-of-show cue failed", "stream", s.stream, "offset_ms", c.OffsetMS, "type", c.Cue.Type, "err", err)
		}
		s.fired(ctx, stop, i+1)
		cancel()
	}
}

// fired records that the run started with stop has fired n cues. It is
// written after the cue: a crash in between fires that cue again after the
// restart, which a card or a sale cue shrugs off (a repeated card.show, a
// sale already running, no sale to end) rather than losing it.
func (s *Show) fired(ctx context.Context, stop chan struct{}, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runStop != stop || s.closed {
		return
	}
	s.run.Fired = n
	if n == len(s.run.Cues) {
		s.run.Running = false
		s.runStop = nil
	}
	// The show goes on in memory when the store fails; the next change
	// that succeeds writes the progress.
	if _, err := s.change(ctx, ShowChange{State: s.state()}, s.cfg.Now()); err != nil {
		s.cfg.Log.Error("run-of-show: store progress", "stream", s.stream, "fired", n, "err", err)
		s.cfg.Metrics.StoreErrors.WithLabelValues("run_of_show").Inc()
	}
}
