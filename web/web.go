// Package web holds the pages Vitrine serves, embedded in the binary: the
// creator studio, the watch page and the embeddable player. They are plain ES
// modules and CSS: nothing to build.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// Mount adds the pages to mux.
func Mount(mux *http.ServeMux) {
	static, _ := fs.Sub(files, "static")
	serve := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			http.ServeFileFS(w, r, static, name)
		}
	}
	mux.HandleFunc("GET /{$}", serve("index.html"))
	mux.HandleFunc("GET /studio", serve("studio.html"))
	mux.HandleFunc("GET /watch/{stream}", serve("watch.html"))
	mux.HandleFunc("GET /sdk/vitrine-player.js", serve("vitrine-player.js"))
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
}
