//! Answers every request with its own body: the same work as Guild's `echo` tool (take the
//! input, give it back), served by `wasmtime serve` in the side-by-side benchmark.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.into_body().bytes_contents().await?;
    Ok(Response::new(body.into()))
}
