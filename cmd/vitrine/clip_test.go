package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media/h264reader"
	"github.com/pion/webrtc/v4/pkg/media/oggreader"
)

// clip is a short real H.264 + Opus recording made by Debian's ffmpeg, cut
// into RTP packets the way a browser would send them.
type clip struct {
	video [][]*rtp.Packet // one slice of packets per frame
	audio []*rtp.Packet   // one 20 ms Opus packet each
}

var (
	clipOnce sync.Once
	clipData *clip
	clipErr  error
)

func testClip(t *testing.T) *clip {
	t.Helper()
	clipOnce.Do(func() { clipData, clipErr = makeClip() })
	if clipErr != nil {
		t.Fatalf("making the test clip with ffmpeg (the README's test command installs it): %v", clipErr)
	}
	return clipData
}

func makeClip() (*clip, error) {
	dir, err := os.MkdirTemp("", "vitrine-clip")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	h264 := filepath.Join(dir, "clip.h264")
	ogg := filepath.Join(dir, "clip.ogg")
	// 2 s of 320x240 at 30 fps, a keyframe every 30 frames, no B-frames
	// (as a browser encodes), and 2 s of Opus in 20 ms packets.
	cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
		"-f", "lavfi", "-t", "2", "-i", "testsrc2=size=320x240:rate=30",
		"-f", "lavfi", "-t", "2", "-i", "sine=frequency=440:sample_rate=48000",
		"-map", "0:v", "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", "30", "-pix_fmt", "yuv420p",
		"-x264-params", "repeat-headers=1", "-f", "h264", h264,
		"-map", "1:a", "-c:a", "libopus", "-frame_duration", "20", "-page_duration", "20000", "-f", "ogg", ogg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, errors.New(err.Error() + ": " + string(out))
	}
	c := &clip{}

	f, err := os.Open(h264)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := h264reader.NewReader(f)
	if err != nil {
		return nil, err
	}
	vp := rtp.NewPacketizer(1200, 102, 1, &codecs.H264Payloader{}, rtp.NewRandomSequencer(), 90000)
	var frame []*rtp.Packet
	for {
		nal, err := r.NextNAL()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		pkts := vp.Packetize(nal.Data, 0)
		frame = append(frame, pkts...)
		if nal.UnitType == h264reader.NalUnitTypeCodedSliceIdr || nal.UnitType == h264reader.NalUnitTypeCodedSliceNonIdr {
			c.video = append(c.video, frame)
			frame = nil
		}
	}

	o, err := os.Open(ogg)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	or, _, err := oggreader.NewWith(o)
	if err != nil {
		return nil, err
	}
	ap := rtp.NewPacketizer(1200, 111, 2, &codecs.OpusPayloader{}, rtp.NewRandomSequencer(), 48000)
	for {
		page, _, err := or.ParseNextPage()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(page) < 8 || string(page[:8]) == "OpusHead" || string(page[:8]) == "OpusTags" {
			continue
		}
		c.audio = append(c.audio, ap.Packetize(page, 960)...)
	}
	if len(c.video) < 30 || len(c.audio) < 50 {
		return nil, fmt.Errorf("clip too short: %d frames, %d audio packets", len(c.video), len(c.audio))
	}
	return c, nil
}

// sentSet remembers the hash of every payload a publisher sent, so viewers
// can check that what they got is byte-identical.
type sentSet struct {
	mu   sync.Mutex
	seen map[[32]byte]bool
}

func (s *sentSet) add(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[[32]byte]bool{}
	}
	s.seen[sha256.Sum256(p)] = true
}

func (s *sentSet) has(p []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[sha256.Sum256(p)]
}

// play sends the clip in a loop at real-time pace until ctx ends, with
// timestamps that keep increasing across loops.
// lastTS, when not nil, follows the timestamp of the frame being sent.
func (c *clip) play(ctx context.Context, video, audio *webrtc.TrackLocalStaticRTP, sent *sentSet, lastTS *atomic.Uint32) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / 30)
		defer tick.Stop()
		ts, seq := uint32(0), uint16(0)
		for i := 0; ; i++ {
			frame := c.video[i%len(c.video)]
			if lastTS != nil {
				lastTS.Store(ts)
			}
			for j, p := range frame {
				q := *p
				q.Timestamp, q.SequenceNumber, q.Marker = ts, seq, j == len(frame)-1
				seq++
				sent.add(q.Payload)
				_ = video.WriteRTP(&q)
			}
			ts += 3000
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		ts, seq := uint32(0), uint16(0)
		for i := 0; ; i++ {
			q := *c.audio[i%len(c.audio)]
			q.Timestamp, q.SequenceNumber = ts, seq
			seq++
			sent.add(q.Payload)
			_ = audio.WriteRTP(&q)
			ts += 960
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	wg.Wait()
}
