//! Every route, one line each: its method, its path, who may call it and
//! its handler. `dispatch` does what all of them share, once: the `Host`
//! guard, finding the route, the method check (`405` with `Allow`), and
//! the role check; the handlers only do their own work.

use super::auth::Role;
use super::problem::ApiError;
use super::{admin, feed, ingest, query, AppState, Response, Surface};
use hyper::body::Incoming;
use hyper::{Method, Request};
use std::future::Future;
use std::pin::Pin;

/// One segment of a route's path.
#[derive(Clone, Copy)]
enum Segment {
    Literal(&'static str),
    /// A process id, checked by the rule writes follow (`Call::id`).
    Id,
}
use Segment::{Id, Literal as L};

/// Who may call a route.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone, on every listener: the probes, the API document, the
    /// CloudEvents handshake.
    Open,
    /// A token of this role or above, when tokens are configured. On the
    /// probe listener (metrics only) no token is asked for.
    Token(Role),
}

/// Which listeners serve a route.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listeners {
    Both,
    Api,
}

type Handled<'a> = Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send + 'a>>;
type Handler = for<'a> fn(Call<'a>) -> Handled<'a>;

struct Route {
    method: Method,
    path: &'static [Segment],
    access: Access,
    listeners: Listeners,
    handler: Handler,
}

/// What a handler is given.
pub struct Call<'a> {
    pub state: &'a AppState,
    pub request: &'a Request<()>,
    /// The body, for the one route that reads it; one left here is
    /// drained by `http::handle`.
    pub body: &'a mut Option<Incoming>,
    /// The path's `{id}` segment, if it has one.
    id: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// The process id of the path, checked by the rule writes follow, so
    /// that a read of an id no write could have made is a 400 naming the
    /// rule, not a 404 that echoes whatever was sent.
    pub fn id(&self) -> Result<&'a str, ApiError> {
        let id = self.id.unwrap_or_default();
        if crate::domain::is_valid_id(id) {
            Ok(id)
        } else {
            Err(ApiError::InvalidQuery {
                parameter: "process_id".into(),
                detail: "a process id is 1 to 200 bytes of letters, digits and . _ : ~ -".into(),
            })
        }
    }

    pub fn query(&self) -> Option<&'a str> {
        self.request.uri().query()
    }
}

macro_rules! route {
    ($method:ident $path:expr, $access:expr, $listeners:ident, |$call:ident| $handler:expr) => {
        Route {
            method: Method::$method,
            path: $path,
            access: $access,
            listeners: Listeners::$listeners,
            handler: |$call| Box::pin(async move { $handler }),
        }
    };
}

use Access::{Open, Token};
use Role::{Admin, Ingest, Read};

/// Looked up in order; a path may have a line per method.
static ROUTES: &[Route] = &[
    route!(GET & [L("livez")], Open, Both, |_c| super::livez().await),
    route!(GET & [L("readyz")], Open, Both, |c| super::readyz(c.state)
        .await),
    route!(GET & [L("healthz")], Open, Both, |c| super::readyz(c.state)
        .await),
    route!(GET & [L("metrics")], Token(Read), Both, |c| super::metrics(
        c.state, c.request
    )
    .await),
    route!(GET & [L("v1"), L("openapi.json")], Open, Api, |c| {
        super::openapi(c.state).await
    }),
    route!(POST & [L("v1"), L("events")], Token(Ingest), Api, |c| {
        ingest::post_events(c.state, c.request, c.body).await
    }),
    route!(OPTIONS & [L("v1"), L("events")], Open, Api, |c| {
        super::handshake(c.state, c.request).await
    }),
    route!(GET & [L("v1"), L("processes")], Token(Read), Api, |c| {
        query::list_processes(c.state, c.query()).await
    }),
    route!(DELETE & [L("v1"), L("processes")], Token(Admin), Api, |c| {
        ingest::purge(c.state, c.query()).await
    }),
    route!(GET & [L("v1"), L("processes"), Id], Token(Read), Api, |c| {
        query::get_process(c.state, c.id()?).await
    }),
    route!(
        DELETE & [L("v1"), L("processes"), Id],
        Token(Admin),
        Api,
        |c| ingest::delete_process(c.state, c.id()?).await
    ),
    route!(
        GET & [L("v1"), L("processes"), Id, L("history")],
        Token(Read),
        Api,
        |c| query::history(c.state, c.id()?, c.query()).await
    ),
    route!(
        GET & [L("v1"), L("processes"), Id, L("await")],
        Token(Read),
        Api,
        |c| feed::await_process(c.state, c.id()?, c.query()).await
    ),
    route!(GET & [L("v1"), L("changes")], Token(Read), Api, |c| {
        feed::changes(c.state, c.request).await
    }),
    route!(
        GET & [L("v1"), L("admin"), L("backup")],
        Token(Admin),
        Api,
        |c| admin::backup(c.state).await
    ),
    route!(GET & [L("v1"), L("stats")], Token(Read), Api, |c| {
        query::stats(c.state).await
    }),
    route!(
        GET & [L("v1"), L("stats"), L("durations")],
        Token(Read),
        Api,
        |c| query::durations(c.state, c.query()).await
    ),
];

fn matches<'s>(path: &[Segment], segments: &[&'s str]) -> Option<Option<&'s str>> {
    if path.len() != segments.len() {
        return None;
    }
    let mut id = None;
    for (pattern, segment) in path.iter().zip(segments) {
        match pattern {
            Segment::Literal(literal) if literal == segment => {}
            Segment::Literal(_) => return None,
            Segment::Id => id = Some(*segment),
        }
    }
    Some(id)
}

/// Each route's pattern (`/v1/processes/{id}`), in the order of `ROUTES`.
static PATTERNS: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| ROUTES.iter().map(|route| pattern(route.path)).collect());

/// The route label of a path for the metrics: its pattern, never an id.
pub fn label(segments: &[&str]) -> &'static str {
    ROUTES
        .iter()
        .position(|route| matches(route.path, segments).is_some())
        .map_or("other", |index| PATTERNS[index].as_str())
}

fn pattern(path: &[Segment]) -> String {
    path.iter()
        .map(|segment| match segment {
            Segment::Literal(literal) => format!("/{literal}"),
            Segment::Id => "/{id}".to_owned(),
        })
        .collect()
}

/// Answers a request by the table.
pub async fn dispatch(
    state: &AppState,
    surface: Surface,
    segments: &[&str],
    request: &Request<()>,
    local: Option<std::net::IpAddr>,
    body: &mut Option<Incoming>,
) -> Result<Response, ApiError> {
    if surface == Surface::Api {
        let host = request
            .uri()
            .authority()
            .map(|authority| authority.as_str())
            .or_else(|| {
                request
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|host| host.to_str().ok())
            });
        if !state.allowed_hosts.allows(host, local) {
            return Err(ApiError::HostNotAllowed(
                host.unwrap_or_default().to_owned(),
            ));
        }
    }
    let on_path: Vec<(&Route, Option<&str>)> = ROUTES
        .iter()
        .filter(|route| surface == Surface::Api || route.listeners == Listeners::Both)
        .filter_map(|route| Some((route, matches(route.path, segments)?)))
        .collect();
    if on_path.is_empty() {
        return Err(match surface {
            Surface::Probes => ApiError::NotFound(
                "this listener serves /livez, /readyz and /metrics only; the API is on the main listener".into(),
            ),
            Surface::Api => ApiError::NotFound(format!(
                "there is no resource at /{}",
                segments.join("/")
            )),
        });
    }
    // HEAD is GET without the body (RFC 9110 9.3.2); hyper leaves the body
    // out of the answer to a HEAD request by itself.
    let method = match request.method() {
        &Method::HEAD => &Method::GET,
        other => other,
    };
    let Some(&(route, id)) = on_path.iter().find(|(route, _)| route.method == method) else {
        let allowed: Vec<&str> = on_path
            .iter()
            .flat_map(|(route, _)| match route.method {
                Method::GET => vec!["GET", "HEAD"],
                ref other => vec![other.as_str()],
            })
            .collect();
        return Err(ApiError::MethodNotAllowed(allowed.join(", ")));
    };
    if let (Access::Token(role), Surface::Api) = (route.access, surface) {
        state.auth.require(request.headers(), role)?;
    }
    (route.handler)(Call {
        state,
        request,
        body,
        id,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_one_line_per_method() {
        for (index, route) in ROUTES.iter().enumerate() {
            let twin = ROUTES[..index].iter().any(|earlier| {
                earlier.method == route.method && pattern(earlier.path) == pattern(route.path)
            });
            assert!(!twin, "{} {} twice", route.method, pattern(route.path));
        }
    }

    #[test]
    fn labels_name_the_pattern_never_the_id() {
        assert_eq!(label(&["v1", "processes", "run-1"]), "/v1/processes/{id}");
        assert_eq!(
            label(&["v1", "processes", "run-1", "history"]),
            "/v1/processes/{id}/history"
        );
        assert_eq!(label(&["nowhere"]), "other");
    }
}
