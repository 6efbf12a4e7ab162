//! The demo page at `/` (and `/r/{room}`): a collaborative editor with chat and presence,
//! built from `client/demo/` by esbuild. The built files are embedded in the binary, so a
//! server never needs Node at run time; this module only serves them (with an ETag, and
//! gzipped when the client accepts it). It knows nothing about rooms: the page talks to the
//! same endpoints as any other client.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

/// One embedded file, with what is computed from it once.
struct Asset {
    content_type: &'static str,
    body: &'static [u8],
    prepared: OnceLock<Prepared>,
}

struct Prepared {
    etag: String,
    gzipped: Vec<u8>,
}

impl Asset {
    const fn new(content_type: &'static str, body: &'static [u8]) -> Self {
        Self {
            content_type,
            body,
            prepared: OnceLock::new(),
        }
    }

    fn prepared(&self) -> &Prepared {
        self.prepared.get_or_init(|| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.body.hash(&mut hasher);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing to a Vec cannot fail; were it to, the plain body is served instead.
            let gzipped = gz
                .write_all(self.body)
                .and_then(|()| gz.finish())
                .unwrap_or_default();
            Prepared {
                etag: format!("\"{:016x}\"", hasher.finish()),
                gzipped,
            }
        })
    }
}

static INDEX: Asset = Asset::new(
    "text/html; charset=utf-8",
    include_bytes!("../../client/demo/dist/index.html"),
);
static APP_JS: Asset = Asset::new(
    "text/javascript; charset=utf-8",
    include_bytes!("../../client/demo/dist/app.js"),
);
static APP_CSS: Asset = Asset::new(
    "text/css; charset=utf-8",
    include_bytes!("../../client/demo/dist/app.css"),
);

/// The page's policy: its own scripts only; CodeMirror sets inline styles; WebSockets to
/// this origin (and, behind a cluster's routing, to the room's owner).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' http: https: ws: wss:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /` and `GET /r/{room}`: the page (the room is read from the URL by the page).
pub async fn page(req: HttpRequest) -> HttpResponse {
    let mut response = serve(&req, &INDEX);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /demo/app.js`.
pub async fn script(req: HttpRequest) -> HttpResponse {
    serve(&req, &APP_JS)
}

/// `GET /demo/app.css`.
pub async fn stylesheet(req: HttpRequest) -> HttpResponse {
    serve(&req, &APP_CSS)
}

/// The asset, or 304 when the client has it; revalidated on every use (`no-cache`), so a
/// new server version is picked up at once.
fn serve(req: &HttpRequest, asset: &'static Asset) -> HttpResponse {
    let prepared = asset.prepared();
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == prepared.etag));
    let mut response = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, prepared.etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::VARY, "accept-encoding"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if matches {
        return response.finish();
    }
    response.content_type(asset.content_type);
    let gzip = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if gzip && !prepared.gzipped.is_empty() {
        response
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(prepared.gzipped.as_slice())
    } else {
        response.body(asset.body)
    }
}
