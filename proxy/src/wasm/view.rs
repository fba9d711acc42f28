//! What a hook sees of a request and a response: [`RequestView`] and [`ResponseView`], the
//! host side of the WIT `request` and `response` resources.
//!
//! A hook gets the request (and in the response hook the response) as a borrowed resource and
//! reads the values it needs through methods, so a call costs only what the module looks at:
//! nothing is copied into the module's memory up front. A request's view is built once when its
//! chain starts, shared by reference count between the hooks of every stage, and rebuilt only
//! when a module rewrites the request. Lending a view to a call puts one reference into the
//! instance's resource table for the length of the call ([`Lent`]).

use std::sync::Arc;

use http::{header, HeaderMap};
use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::component::{Resource, ResourceTable};

use super::host::{wit, HostState};

/// The request as the chain has left it so far: what the WIT `request` methods read.
#[derive(Debug, Clone)]
pub struct RequestView {
    method: http::Method,
    host: String,
    uri: http::Uri,
    headers: HeaderMap,
    client_ip: String,
    upstream_group: String,
}

/// A request view as the resource table holds it: lending it to a call copies a pointer.
pub type SharedRequest = Arc<RequestView>;

impl RequestView {
    /// The view of `req` from `client_ip`, routed to `group`.
    pub fn new(req: &RequestHeader, client_ip: String, group: String) -> Self {
        Self {
            method: req.method.clone(),
            host: req
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .unwrap_or_default()
                .to_owned(),
            uri: req.uri.clone(),
            headers: req.headers.clone(),
            client_ip,
            upstream_group: group,
        }
    }

    /// The same request after a module rewrote `req` and possibly its group.
    pub fn rewritten(&self, req: &RequestHeader, group: Option<String>) -> Self {
        Self::new(
            req,
            self.client_ip.clone(),
            group.unwrap_or_else(|| self.upstream_group.clone()),
        )
    }

    /// The path, for logs.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The query without `?`, empty when there is none.
    pub fn query(&self) -> &str {
        self.uri.query().unwrap_or_default()
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The upstream group the request goes to.
    pub fn upstream_group(&self) -> &str {
        &self.upstream_group
    }
}

/// The response about to go to the client: what the WIT `response` methods read.
#[derive(Debug)]
pub struct ResponseView {
    status: u16,
    headers: HeaderMap,
    cache_status: &'static str,
}

impl ResponseView {
    /// The view of `resp`, which the cache answered as `cache_status`.
    pub fn new(resp: &ResponseHeader, cache_status: &'static str) -> Self {
        Self {
            status: resp.status.as_u16(),
            headers: resp.headers.clone(),
            cache_status,
        }
    }
}

/// The first UTF-8 value of `name` in `headers` (WIT `header`).
fn first(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    Some(value.to_owned())
}

/// Every UTF-8 value of `name` in `headers` (WIT `header-values`).
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| Some(v.to_str().ok()?.to_owned()))
        .collect()
}

/// All headers with UTF-8 values (WIT `headers`).
pub fn header_records(headers: &HeaderMap) -> Vec<wit::Header> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some(wit::Header {
                name: name.as_str().to_owned(),
                value: value.to_str().ok()?.to_owned(),
            })
        })
        .collect()
}

/// A value lent to one hook call through an instance's resource table. The guest can only
/// borrow it (no WIT function hands out an owned `request` or `response`), so the entry is
/// the host's to take back once the call returns ([`Lent::take_back`]); after a trap the
/// whole instance, table included, is dropped instead.
pub struct Lent<T: 'static>(Resource<T>);

impl<T: Send + 'static> Lent<T> {
    /// Puts `value` into `table` for one call.
    pub fn lend(table: &mut ResourceTable, value: T) -> wasmtime::Result<Self> {
        Ok(Self(table.push(value)?))
    }

    /// The handle to pass as the call's `borrow<...>` argument.
    pub fn handle(&self) -> Resource<T> {
        Resource::new_borrow(self.0.rep())
    }

    /// Removes the value from `table` after the call.
    pub fn take_back(self, table: &mut ResourceTable) -> wasmtime::Result<T> {
        Ok(table.delete(self.0)?)
    }
}

impl wit::HostRequest for HostState {
    fn method(&mut self, req: Resource<SharedRequest>) -> String {
        self.view(&req, |r| r.method.as_str().to_owned())
    }

    fn host(&mut self, req: Resource<SharedRequest>) -> String {
        self.view(&req, |r| r.host.clone())
    }

    fn path(&mut self, req: Resource<SharedRequest>) -> String {
        self.view(&req, |r| r.path().to_owned())
    }

    fn query(&mut self, req: Resource<SharedRequest>) -> String {
        self.view(&req, |r| r.query().to_owned())
    }

    fn header(&mut self, req: Resource<SharedRequest>, name: String) -> Option<String> {
        self.view(&req, |r| first(&r.headers, &name))
    }

    fn header_values(&mut self, req: Resource<SharedRequest>, name: String) -> Vec<String> {
        self.view(&req, |r| values(&r.headers, &name))
    }

    fn headers(&mut self, req: Resource<SharedRequest>) -> Vec<wit::Header> {
        self.view(&req, |r| header_records(&r.headers))
    }

    fn client_ip(&mut self, req: Resource<SharedRequest>) -> String {
        self.view(&req, |r| r.client_ip.clone())
    }

    fn upstream_group(&mut self, req: Resource<SharedRequest>) -> String {
        self.view(&req, |r| r.upstream_group.clone())
    }

    fn drop(&mut self, req: Resource<SharedRequest>) -> wasmtime::Result<()> {
        // Only reached for an owned handle, which no WIT function gives out.
        self.table.delete(req)?;
        Ok(())
    }
}

impl wit::HostResponse for HostState {
    fn status(&mut self, resp: Resource<ResponseView>) -> u16 {
        self.view(&resp, |r| r.status)
    }

    fn header(&mut self, resp: Resource<ResponseView>, name: String) -> Option<String> {
        self.view(&resp, |r| first(&r.headers, &name))
    }

    fn header_values(&mut self, resp: Resource<ResponseView>, name: String) -> Vec<String> {
        self.view(&resp, |r| values(&r.headers, &name))
    }

    fn headers(&mut self, resp: Resource<ResponseView>) -> Vec<wit::Header> {
        self.view(&resp, |r| header_records(&r.headers))
    }

    fn cache_status(&mut self, resp: Resource<ResponseView>) -> String {
        self.view(&resp, |r| r.cache_status.to_owned())
    }

    fn drop(&mut self, resp: Resource<ResponseView>) -> wasmtime::Result<()> {
        self.table.delete(resp)?;
        Ok(())
    }
}

impl HostState {
    /// Reads the lent value behind `handle`. The component model only lets a guest pass
    /// handles it was given, so the lookup cannot miss while a call runs; if it ever did, the
    /// guest would see an empty value rather than the proxy trapping it.
    fn view<T: 'static, R: Default>(&self, handle: &Resource<T>, read: impl FnOnce(&T) -> R) -> R {
        self.table.get(handle).map(read).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_view_mirrors_the_request() {
        let mut req = RequestHeader::build("GET", b"/live/a/index.m3u8?x=1", None).unwrap();
        req.insert_header("host", "cdn.example").unwrap();
        req.append_header("cookie", "a=1").unwrap();
        req.append_header("cookie", "b=2").unwrap();
        let view = RequestView::new(&req, "192.0.2.1".into(), "live".into());
        assert_eq!(view.method, "GET");
        assert_eq!(view.host, "cdn.example");
        assert_eq!(view.path(), "/live/a/index.m3u8");
        assert_eq!(view.query(), "x=1");
        assert_eq!(view.client_ip, "192.0.2.1");
        assert_eq!(view.upstream_group(), "live");
        assert_eq!(first(&view.headers, "Cookie").as_deref(), Some("a=1"));
        assert_eq!(values(&view.headers, "cookie"), ["a=1", "b=2"]);
        assert_eq!(first(&view.headers, "x-missing"), None);
        // Names come from the guest: one that is no valid header name finds nothing.
        assert_eq!(first(&view.headers, "bad name\n"), None);
        assert!(values(&view.headers, "").is_empty());
        assert_eq!(header_records(&view.headers).len(), 3);
    }

    #[test]
    fn a_lent_value_comes_back_out_of_the_table() {
        let mut table = ResourceTable::new();
        let lent = Lent::lend(&mut table, 7_u32).unwrap();
        assert_eq!(*table.get(&lent.handle()).unwrap(), 7);
        assert_eq!(lent.take_back(&mut table).unwrap(), 7);
    }
}
