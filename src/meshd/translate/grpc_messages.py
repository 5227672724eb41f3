"""gRPC message counts (Istio's `istio_request_messages_total` / `istio_response_messages_total`) from
upstream Envoy.

Envoy's `grpc_stats` HTTP filter counts the gRPC messages of each call both ways and, with
`emit_filter_state`, keeps them in the stream's filter state (`envoy.filters.http.grpc_stats`). A stats access
logger cannot read them as numbers there (the object serializes only as the text `<request>,<response>` and
has no field access), so a small Lua step (`envoy.filters.http.lua`, in the bundled Envoy) waits for the end
of the response (its trailers, or the end of the stream: it streams, nothing is buffered), reads that text
and writes both counts as numbers into dynamic metadata (`meshd.grpc`). The stats logger built by
`message_counters` reads them from there, and only logs when they are present: a gRPC call, counted once
at its end, streaming calls with the number of messages each way.

The Lua step runs on gRPC requests only: it is wrapped in Envoy's `match_delegate` filter, which skips it
unless the request's `content-type` starts with `application/grpc` (grpc_stats itself ignores other
requests). Both filters stand right after the peer-metadata exchange, before any filter that may answer
locally, so grpc_stats sees every message the call carries.
"""

from __future__ import annotations

import functools

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, metadata_pb2
from xds.type.matcher.v3 import matcher_pb2

from meshd.translate.proto import pack

GRPC_STATS = "envoy.filters.http.grpc_stats"
COUNTS_FILTER = "meshd.grpc_message_counts"  # the Lua step, wrapped in match_delegate
FILTER_NAMES = (COUNTS_FILTER, GRPC_STATS)
MESSAGES_METADATA = "meshd.grpc"
REQUEST_MESSAGES_KEY = "request_messages"
RESPONSE_MESSAGES_KEY = "response_messages"
REQUEST_MESSAGES_VALUE = f"%DYNAMIC_METADATA({MESSAGES_METADATA}:{REQUEST_MESSAGES_KEY})%"
RESPONSE_MESSAGES_VALUE = f"%DYNAMIC_METADATA({MESSAGES_METADATA}:{RESPONSE_MESSAGES_KEY})%"

LUA_SOURCE = f"""\
function envoy_on_response(handle)
  handle:trailers()
  local info = handle:streamInfo()
  local counts = info:filterState():get("{GRPC_STATS}")
  if counts == nil then
    return
  end
  local sent, received = string.match(tostring(counts), "^(%d+),(%d+)$")
  if sent ~= nil then
    local metadata = info:dynamicMetadata()
    metadata:set("{MESSAGES_METADATA}", "{REQUEST_MESSAGES_KEY}", tonumber(sent))
    metadata:set("{MESSAGES_METADATA}", "{RESPONSE_MESSAGES_KEY}", tonumber(received))
  end
end
"""


def message_count_filters() -> list[hcm_pb2.HttpFilter]:
    """The HTTP filters that count a gRPC call's messages into dynamic metadata (Lua step first: on the
    response path it runs after grpc_stats has seen every message)."""
    return list(_filters())


@functools.lru_cache(maxsize=1)
def _filters() -> tuple[hcm_pb2.HttpFilter, ...]:
    lua = lua_pb2.Lua()
    lua.default_source_code.inline_string = LUA_SOURCE
    skip_unless_grpc = matcher_pb2.Matcher()
    field = skip_unless_grpc.matcher_list.matchers.add()
    single = field.predicate.not_matcher.single_predicate
    single.input.name = "content-type"
    single.input.typed_config.CopyFrom(pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name="content-type")))
    single.value_match.prefix = "application/grpc"
    field.on_match.action.name = "skip"
    field.on_match.action.typed_config.CopyFrom(pack(skip_action_pb2.SkipFilter()))
    wrapped = extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=skip_unless_grpc,
        extension_config=extension_pb2.TypedExtensionConfig(name=COUNTS_FILTER, typed_config=pack(lua)),
    )
    stats = grpc_stats_pb2.FilterConfig(emit_filter_state=True)
    stats.stats_for_all_methods.value = False
    return (
        hcm_pb2.HttpFilter(name=COUNTS_FILTER, typed_config=pack(wrapped)),
        hcm_pb2.HttpFilter(name=GRPC_STATS, typed_config=pack(stats)),
    )


def only_grpc_calls(log: accesslog_pb2.AccessLog) -> accesslog_pb2.AccessLog:
    """`log` (the message counters' stats logger) logs only streams the Lua step gave counts: gRPC calls."""
    matcher = metadata_pb2.MetadataMatcher(filter=MESSAGES_METADATA)
    matcher.path.add(key=REQUEST_MESSAGES_KEY)
    matcher.value.present_match = True
    log.filter.metadata_filter.matcher.CopyFrom(matcher)
    log.filter.metadata_filter.match_if_key_not_found.value = False
    return log
