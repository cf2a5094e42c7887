// Package web holds the pages Vitrine serves, embedded in the binary: the
// creator studio, the watch page, the embeddable player and an example shop
// page. They are plain ES modules and CSS: nothing to build.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static examples
var files embed.FS

// Mount adds the pages to mux.
func Mount(mux *http.ServeMux) {
	serve := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			http.ServeFileFS(w, r, files, name)
		}
	}
	mux.HandleFunc("GET /{$}", serve("static/index.html"))
	mux.HandleFunc("GET /studio", serve("static/studio.html"))
	mux.HandleFunc("GET /watch/{stream}", serve("static/watch.html"))
	mux.HandleFunc("GET /examples/shop", serve("examples/shop.html"))
	// The player, its chat and its products drawer are loaded by shops on
	// other origins as module scripts, which browsers fetch with CORS.
	for _, sdk := range []string{"vitrine-player.js", "vitrine-chat.js", "vitrine-products.js"} {
		mux.HandleFunc("GET /sdk/"+sdk, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Access-Control-Allow-Origin", "*")
			http.ServeFileFS(w, r, files, "static/"+sdk)
		})
	}
	static, _ := fs.Sub(files, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
}
