//! Reading an operations endpoint from the outside, as Prometheus or a load balancer does: for
//! the demo, `scaleout bench` and the tests.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why an endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach the metrics endpoint at {addr}: {source}; is metrics_listen set and the process running?")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no complete answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} did not answer in HTTP: {answer}")]
    NotHttp { addr: String, answer: String },
}

/// An answer: the status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `GET path` from `addr` over plain HTTP/1.1, within `timeout`.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Result<Answer, ProbeError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout {
            addr: addr.to_string(),
            timeout,
        })?
        .map_err(|source| ProbeError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let not_http = || ProbeError::NotHttp {
        addr: addr.to_string(),
        answer: response.chars().take(200).collect(),
    };
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(not_http)?;
    let (_, body) = response.split_once("\r\n\r\n").ok_or_else(not_http)?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// The samples of a Prometheus text page, `name{labels}` (exactly as rendered) to value.
pub fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_series() {
        let page = "# HELP a_total x\n# TYPE a_total counter\na_total 3\n\
                    b{state=\"queued\"} 1.5\nb{state=\"running\"} 0\n\nbroken line\n";
        let read = samples(page);
        assert_eq!(read.get("a_total"), Some(&3.0));
        assert_eq!(read.get("b{state=\"queued\"}"), Some(&1.5));
        assert_eq!(read.get("b{state=\"running\"}"), Some(&0.0));
        assert_eq!(read.len(), 3);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = get(&addr, "/healthz", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("cannot reach"), "{error}");
    }
}
