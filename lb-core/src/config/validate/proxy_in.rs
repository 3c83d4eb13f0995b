//! A service's PROXY-protocol-in keys: `accept_proxy`, `proxy_trusted`
//! (required and non-empty with it, CIDRs as `admin_allow` takes them) and
//! `proxy_header_timeout` (a duration > 0, default 3 s). The two others are
//! refused without `accept_proxy = true`: set alone they would suggest a
//! protection that is not there. Runs on the thread loading the config;
//! no I/O.

use std::ops::Range;

use super::{convert_duration, each, Invalid, Zero};
use crate::config::raw::RawService;
use crate::config::value::parse_cidr;
use crate::config::AcceptProxy;

/// `accept_proxy` and its companions of the service at `path`.
pub(super) fn convert_accept_proxy(
    raw: &RawService,
    table: &Range<usize>,
    path: &str,
) -> Result<Option<AcceptProxy>, Invalid> {
    let at = |key: &str| format!("{path}.{key}");
    let on = raw.accept_proxy.as_ref().is_some_and(|v| *v.get_ref());
    if !on {
        if let Some(list) = &raw.proxy_trusted {
            return Err(Invalid::at(
                list.span(),
                at("proxy_trusted"),
                "is set but accept_proxy is not true (set accept_proxy = true to read PROXY headers from these balancers, or remove it)",
            ));
        }
        if let Some(timeout) = &raw.proxy_header_timeout {
            return Err(Invalid::at(
                timeout.span(),
                at("proxy_header_timeout"),
                "is set but accept_proxy is not true (set accept_proxy = true, or remove it)",
            ));
        }
        return Ok(None);
    }
    let Some(list) = &raw.proxy_trusted else {
        return Err(Invalid::at(
            table.clone(),
            path,
            "missing key `proxy_trusted` (accept_proxy = true needs the balancers allowed to send PROXY headers, as CIDRs such as [\"10.0.0.0/24\"])",
        ));
    };
    if list.get_ref().is_empty() {
        return Err(Invalid::at(
            list.span(),
            at("proxy_trusted"),
            "is empty, so every client would be refused (list the balancers in front as CIDRs such as \"10.0.0.0/24\")",
        ));
    }
    let trusted = each(list, &at("proxy_trusted"), parse_cidr)?;
    let header_timeout = match &raw.proxy_header_timeout {
        None => AcceptProxy::DEFAULT_TIMEOUT,
        Some(value) => convert_duration(value, &at("proxy_header_timeout"), Zero::Refused)?,
    };
    Ok(Some(AcceptProxy {
        trusted,
        header_timeout,
    }))
}
