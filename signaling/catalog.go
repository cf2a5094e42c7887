package signaling

import "net/http"

// catalogRoutes mounts the catalog API (being written).
func (s *Server) catalogRoutes(route func(string, http.HandlerFunc)) {}
