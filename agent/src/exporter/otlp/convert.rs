//! Finished spans as an OTLP `ExportTraceServiceRequest`, grouped by resource.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue as ProtoKeyValue, any_value},
    resource::v1::Resource as ProtoResource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
};

use crate::trace::{
    SpanData,
    span::{AttrValue, KeyValue, Resource, SpanKind, SpanStatus},
};

pub(super) fn value(kv: &KeyValue) -> ProtoKeyValue {
    let value = match &kv.value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Shared(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
    };
    ProtoKeyValue {
        key: kv.key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn span(data: &SpanData) -> Span {
    let (code, message) = match &data.status {
        SpanStatus::Unset => (status::StatusCode::Unset, String::new()),
        SpanStatus::Error(m) => (status::StatusCode::Error, m.clone()),
    };
    Span {
        trace_id: data.trace_id.to_vec(),
        span_id: data.span_id.to_vec(),
        parent_span_id: data.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: data.name.to_string(),
        kind: match data.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: data.start_unix_nano,
        end_time_unix_nano: data.end_unix_nano,
        attributes: data.attributes.iter().map(value).collect(),
        links: data
            .links
            .iter()
            .map(|l| span::Link {
                trace_id: l.trace_id.to_vec(),
                span_id: l.span_id.to_vec(),
                attributes: vec![value(&KeyValue::str("sockspan.link.reason", l.reason))],
                ..Default::default()
            })
            .collect(),
        status: Some(Status {
            message,
            code: code as i32,
        }),
        ..Default::default()
    }
}

fn resource(resource: &Resource, extra: &[KeyValue]) -> ProtoResource {
    let mut attributes: Vec<ProtoKeyValue> = resource.attributes().iter().map(value).collect();
    for kv in extra {
        if !resource.attributes().iter().any(|own| own.key == kv.key) {
            attributes.push(value(kv));
        }
    }
    ProtoResource {
        attributes,
        ..Default::default()
    }
}

/// One request for `spans`; spans of one process share one `ResourceSpans`.
#[must_use]
pub fn request(spans: &[SpanData], extra_resource: &[KeyValue]) -> ExportTraceServiceRequest {
    let mut groups: Vec<(&Arc<Resource>, Vec<Span>)> = Vec::new();
    for data in spans {
        match groups
            .iter_mut()
            .find(|(r, _)| Arc::ptr_eq(r, &data.resource))
        {
            Some((_, list)) => list.push(span(data)),
            None => groups.push((&data.resource, vec![span(data)])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(resource(r, extra_resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "sockspan".to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::SpanLink;

    fn data(resource: &Arc<Resource>, id: u8) -> SpanData {
        SpanData {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent_span_id: (id > 1).then_some([1; 8]),
            links: vec![SpanLink {
                trace_id: [2; 16],
                span_id: [3; 8],
                reason: "test",
            }],
            kind: SpanKind::Server,
            name: "GET /x".into(),
            start_unix_nano: 10,
            end_unix_nano: 20,
            attributes: vec![KeyValue::int("http.response.status_code", 500)],
            status: SpanStatus::Error("HTTP 500".into()),
            resource: Arc::clone(resource),
        }
    }

    #[test]
    fn groups_by_resource_and_maps_fields() {
        let a = Arc::new(Resource::new(vec![KeyValue::str("service.name", "a")]));
        let b = Arc::new(Resource::new(vec![KeyValue::str("service.name", "b")]));
        let extra = [
            KeyValue::str("deployment.environment", "prod"),
            KeyValue::str("service.name", "override"),
        ];
        let req = request(&[data(&a, 1), data(&b, 2), data(&a, 3)], &extra);
        assert_eq!(req.resource_spans.len(), 2);
        let first = &req.resource_spans[0];
        assert_eq!(first.scope_spans[0].spans.len(), 2);
        let attrs = &first.resource.as_ref().expect("resource").attributes;
        assert_eq!(
            attrs.len(),
            2,
            "env attributes never override the process's own"
        );
        let s = &first.scope_spans[0].spans[1];
        assert_eq!(s.parent_span_id, vec![1; 8]);
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(
            s.status.as_ref().expect("status").code,
            status::StatusCode::Error as i32
        );
        assert_eq!(s.links[0].span_id, vec![3; 8]);
        assert!(first.scope_spans[0].spans[0].parent_span_id.is_empty());
    }
}
