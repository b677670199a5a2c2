//! `GET /v1/admin/backup`: a consistent snapshot of the store, streamed.

use super::problem::ApiError;
use super::{blocking, AppState, Response};
use crate::progress::Progress;
use crate::store::backup;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::StatusCode;
use tokio_util::io::ReaderStream;

pub async fn backup(state: &AppState) -> Result<Response, ApiError> {
    let data_dir = state.data_dir.clone();
    // The snapshot goes to a file beside the store (never into memory),
    // from one read transaction while writes go on; then it is streamed.
    let (temp, counters, sha256, length) = blocking(state, move |snapshots| {
        let io = |error: std::io::Error| ApiError::Internal(format!("backup file: {error}"));
        let temp = tempfile::Builder::new()
            .prefix(".processmanager-backup-")
            .suffix(".tmp")
            .tempfile_in(&data_dir)
            .map_err(io)?
            .into_temp_path();
        let counters = backup::write_snapshot(&*snapshots.get()?, &temp, &Progress::hidden())?;
        let sha256 = backup::sha256_file(&temp).map_err(io)?;
        let length = std::fs::metadata(&temp).map_err(io)?.len();
        Ok((temp, counters, sha256, length))
    })
    .await?;
    let file = tokio::fs::File::open(&temp)
        .await
        .map_err(|error| ApiError::Internal(format!("backup file: {error}")))?;
    // The temporary file lives as long as the body: removed once sent, or
    // when the client goes away.
    let frames = ReaderStream::new(file).map(move |chunk| {
        let _keep_until_sent = &temp;
        chunk.map(Frame::data)
    });
    let mut response = hyper::Response::new(BodyExt::boxed(StreamBody::new(frames)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let last_seq = counters.last_seq;
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert("x-backup-last-seq", HeaderValue::from(last_seq));
    headers.insert(
        "x-backup-processes",
        HeaderValue::from(counters.processes_total()),
    );
    if let Ok(value) = HeaderValue::from_str(&sha256) {
        headers.insert("x-backup-sha256", value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"processmanager-{last_seq}.redb\""
    )) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
