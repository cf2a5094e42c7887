package signaling

import (
	"net/http"
	"time"
)

// getHealth tells the creator how the stream arrives and what to fix
// (media.Health). The studio polls it.
func (s *Server) getHealth(w http.ResponseWriter, r *http.Request) {
	_, st, ok := s.streamAuth(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, st.Health(time.Now()))
}
