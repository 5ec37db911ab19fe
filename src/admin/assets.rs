//! The console's static files, compiled into the binary: vendored htmx and Chart.js (immutable: their names carry
//! their versions) and the console's own stylesheet.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (name, content type, cache policy, bytes).
const FILES: &[(&str, &str, &str, &[u8])] = &[
    (
        "htmx-2.0.11.min.js",
        "text/javascript; charset=utf-8",
        "public, max-age=31536000, immutable",
        include_bytes!("../../assets/admin/htmx-2.0.11.min.js"),
    ),
    (
        "chart-4.6.1.umd.min.js",
        "text/javascript; charset=utf-8",
        "public, max-age=31536000, immutable",
        include_bytes!("../../assets/admin/chart-4.6.1.umd.min.js"),
    ),
    (
        "admin.css",
        "text/css; charset=utf-8",
        "public, max-age=3600",
        include_bytes!("../../assets/admin/admin.css"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        "public, max-age=3600",
        include_bytes!("../../assets/admin/admin.js"),
    ),
];

/// `GET /admin/assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, ..)| *name == file) {
        Some((_, content_type, cache, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, *cache),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
