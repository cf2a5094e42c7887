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
// must not decrease and the cue types must be known; products are checked
// when each cue fires, since stock and the catalog change during a show.
func (s *Show) LoadRunOfShow(cues []TimedCue) error {
	if len(cues) == 0 || len(cues) > MaxRunOfShow {
		return fmt.Errorf("%w: a run-of-show has 1 to %d cues", ErrBadCue, MaxRunOfShow)
	}
	last := int64(0)
	for i, c := range cues {
		switch c.Cue.Type {
		case CueShowCard, CueHideCard, CueSaleStart, CueSaleEnd, CueCustom:
		default:
			return fmt.Errorf("%w: cue %d: unknown type %q", ErrBadCue, i+1, c.Cue.Type)
		}
		if c.OffsetMS < last || c.OffsetMS > 24*3600*1000 {
			return fmt.Errorf("%w: cue %d: offset_ms must not decrease and stay within 24 h", ErrBadCue, i+1)
		}
		if c.Cue.ClickTime != 0 {
			return fmt.Errorf("%w: cue %d: a run-of-show cue has no click time", ErrBadCue, i+1)
		}
		last = c.OffsetMS
	}
	s.StopRunOfShow()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.run = RunOfShow{Cues: append([]TimedCue(nil), cues...)}
	return nil
}

// StartRunOfShow fires the loaded cues at their offsets from now. Starting
// again restarts from the first cue.
func (s *Show) StartRunOfShow() (RunOfShow, error) {
	s.StopRunOfShow()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.run.Cues) == 0 {
		return s.run, fmt.Errorf("%w: no run-of-show loaded", ErrBadCue)
	}
	stop := make(chan struct{})
	s.runStop = stop
	s.run.Running, s.run.StartedAt, s.run.Fired = true, s.cfg.Now(), 0
	cues := s.run.Cues
	go s.runCues(cues, s.run.StartedAt, stop)
	return s.run, nil
}

// StopRunOfShow stops the cues that have not fired yet.
func (s *Show) StopRunOfShow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runStop != nil {
		close(s.runStop)
		s.runStop = nil
	}
	s.run.Running = false
}

// RunOfShowState reports the loaded run-of-show and its progress.
func (s *Show) RunOfShowState() RunOfShow {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run
}

func (s *Show) runCues(cues []TimedCue, start time.Time, stop chan struct{}) {
	for _, c := range cues {
		wait := time.Until(start.Add(time.Duration(c.OffsetMS) * time.Millisecond))
		timer := time.NewTimer(wait)
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
		cancel()
		s.mu.Lock()
		if s.runStop == stop {
			s.run.Fired++
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	if s.runStop == stop {
		s.run.Running = false
		s.runStop = nil
	}
	s.mu.Unlock()
}
