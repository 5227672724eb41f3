"""The demo's peer identity column: XFCC parsing, the identities along a chain, the table rows."""

from __future__ import annotations

import collections
import json

from meshd.demo.display import View, render_line, render_table
from meshd.demo.identity import peer_identity, xfcc_elements
from meshd.demo.traffic import Sample, hop_peers, tally

CLIENT = "spiffe://cluster.local/ns/default/sa/client"


def test_the_last_xfcc_element_names_the_immediate_peer() -> None:
    header = (
        'By=spiffe://cluster.local/ns/default/sa/a;Hash=ab12;Subject="O=x,CN=y";URI=spiffe://cluster.local/ns/x/sa/first,'
        f'By=spiffe://cluster.local/ns/default/sa/web;Hash=cd34;Subject="";URI={CLIENT};DNS=client.example'
    )
    elements = xfcc_elements(header)
    assert [e["uri"] for e in elements] == ["spiffe://cluster.local/ns/x/sa/first", CLIENT]
    assert elements[0]["subject"] == "O=x,CN=y"
    assert peer_identity(header) == CLIENT
    assert peer_identity(None) is None and peer_identity("") is None
    assert peer_identity("Hash=ab") is None


def test_peers_along_a_chain_and_their_tally() -> None:
    answer = {"peer": "spiffe://td/ns/d/sa/loadgen", "upstream": {"peer": None, "upstream": {"peer": CLIENT}}}
    peers = hop_peers(text=json.dumps(answer))
    assert peers == ("spiffe://td/ns/d/sa/loadgen", None, CLIENT)
    counted = tally(samples=[Sample(sent_at=0.0, version="v1", error=None, peers=peers)], since=0.0)
    assert counted.peers == collections.Counter({peers: 1})


def test_table_and_line_show_each_hop_identity() -> None:
    peers = ("spiffe://cluster.local/ns/default/sa/loadgen", "spiffe://cluster.local/ns/default/sa/frontend", None)
    phase = tally(samples=[Sample(sent_at=0.0, version="v1", error=None, peers=peers)], since=0.0)
    view = View(
        phase=1, phases=1, title="t", elapsed_s=1, duration_s=2, versions=["v1"], file_weights="v1=100",
        envoy_weights="v1=100", last_second=phase, this_phase=phase,
        hops=("loadgen", "frontend", "catalog", "backend"),
    )  # fmt: skip
    table = "\n".join(render_table(view=view))
    assert "loadgen -> frontend" in table and "spiffe://cluster.local/ns/default/sa/loadgen" in table
    assert "default/frontend" in table
    assert "catalog -> backend" in table and "plaintext (no peer certificate)" in table
    line = render_line(view=view)
    assert "loadgen -> frontend: default/loadgen" in line and "frontend -> catalog: default/frontend" in line
