//! The `/metrics` HTTP listener (hyper, HTTP/1.1, GET only).
use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Metrics;
use super::loader::LoaderReader;

/// Serves `metrics` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    loader: Option<Arc<LoaderReader>>,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { debug!(error = %e, "metrics accept failed"); continue; }
            },
        };
        let (metrics, loader) = (metrics.clone(), loader.clone());
        let service =
            hyper::service::service_fn(move |request| answer(request, metrics.clone(), loader.clone()));
        connections.spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn answer(
    request: Request<Incoming>,
    metrics: Arc<Metrics>,
    loader: Option<Arc<LoaderReader>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "only GET /metrics is served here\n".into()));
    }
    if let Some(loader) = &loader {
        loader.refresh(&metrics.loader).await;
    }
    Ok(match metrics.render() {
        Ok(text) => reply(StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode the metrics: {e}\n"),
        ),
    })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
