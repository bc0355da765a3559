"""Emulated links shape as configured: rates by tbf, delay through the user-space TUN delay line."""

import subprocess

import pytest

from flsim.links import LinkProfile
from netsim.fabric import AccessLink, LinkSpec
from netsim.fabric.probe import measure
from tests.flsim.conftest import NEEDS_NETNS, NET, PREFIX

pytestmark = NEEDS_NETNS

TCP_GOODPUT = 0.958  # payload share of an IP-layer rate with 1500-byte packets (tbf's convention)


@pytest.mark.slow
def test_profile_rates_as_configured(clean_namespaces):
    prof = LinkProfile("t", down_mbit=24.0, up_mbit=6.0)
    with AccessLink(PREFIX + "t", 7, prof.spec(), net=NET) as link:
        up = measure(link.exec_prefix(), link.server_ip, "up", 1_500_000)["goodput_bps"]
        down = measure(link.exec_prefix(), link.server_ip, "down", 6_000_000)["goodput_bps"]
    assert up == pytest.approx(6e6 * TCP_GOODPUT, rel=0.05)
    assert down == pytest.approx(24e6 * TCP_GOODPUT, rel=0.05)


@pytest.mark.slow
def test_delay_line_adds_configured_delay_and_keeps_the_rate_cap(clean_namespaces):
    prof = LinkProfile("t", down_mbit=24.0, up_mbit=6.0, down_delay_ms=8.0, up_delay_ms=4.0)
    with AccessLink(PREFIX + "l", 6, prof.spec(), net=NET) as link:
        rtt = measure(link.exec_prefix(), link.server_ip, "rtt", 9)["rtt_min_s"]
        up = measure(link.exec_prefix(), link.server_ip, "up", 1_500_000)["goodput_bps"]
        tc = subprocess.run(["tc", "-n", link.router, "qdisc", "show"], capture_output=True, text=True,
                            check=False).stdout
    assert tc.count("tbf") == 2  # both directions shaped on the router's egress devices
    # 8 + 4 ms one-way; the minimum over connects leaves out scheduling delays of a loaded machine
    assert rtt == pytest.approx(0.012, abs=0.002)
    # tbf caps the rate; the user-space line may lose some throughput when the 2 cores are saturated
    assert 0.75 * 6e6 * TCP_GOODPUT <= up <= 1.03 * 6e6 * TCP_GOODPUT


def test_unimpaired_link_has_no_router_and_is_removed(clean_namespaces):
    spec = LinkSpec(down_bps=50e6, up_bps=10e6)
    link = AccessLink(PREFIX + "u", 8, spec, net=NET).up()
    try:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        assert link.namespace in names.split() and link.router not in names.split()
        qd = subprocess.run(["tc", "-n", link.namespace, "qdisc", "show", "dev", "eth0"], capture_output=True,
                            text=True, check=False).stdout
        assert "tbf" in qd and "10Mbit" in qd
    finally:
        link.down()
    assert subprocess.run(["ip", "link", "show", link.host_dev], capture_output=True, check=False).returncode != 0


@pytest.mark.slow
def test_mahimahi_trace_sets_the_uplink_rate(tmp_path, clean_namespaces):
    trace = tmp_path / "up.trace"
    trace.write_text("".join(f"{ms}\n" for ms in range(1, 101)))  # one 1500-byte packet per ms: 12 Mbit/s
    spec = LinkSpec(down_bps=50e6, up_bps=12e6, up_trace=str(trace), up_delay_ms=2.0)
    with AccessLink(PREFIX + "m", 9, spec, net=NET) as link:
        up = measure(link.exec_prefix(), link.server_ip, "up", 2_000_000)["goodput_bps"]
        qd = subprocess.run(["tc", "-n", link.router, "qdisc", "show", "dev", "up0"], capture_output=True,
                            text=True, check=False).stdout
    assert "tbf" not in qd  # the trace, not tbf, limits this direction
    # the trace (served by the user-space line) caps the rate; saturated cores may cost some throughput
    assert 0.75 * 12e6 * TCP_GOODPUT <= up <= 1.03 * 12e6 * TCP_GOODPUT


def test_existing_namespace_is_refused_not_deleted(clean_namespaces):
    from netsim.fabric import FabricError
    from netsim.fabric.namespaces import create_namespace, delete_namespace, list_namespaces

    name = PREFIX + "x"
    create_namespace(name)
    try:
        with pytest.raises(FabricError, match=rf"\['{name}'\] already exist"):
            AccessLink(PREFIX + "x", 10, LinkSpec(down_bps=1e6, up_bps=1e6), net=NET).up()
        assert name in list_namespaces()
    finally:
        delete_namespace(name)


def test_an_address_block_the_host_already_uses_is_refused(clean_namespaces):
    from netsim.fabric import FabricError

    dev = PREFIX + "dm"
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"], check=True)  # no dummy module here
    try:
        subprocess.run(["ip", "addr", "add", f"10.{NET}.11.1/30", "dev", dev], check=True)
        with pytest.raises(FabricError, match=rf"address block 10\.{NET}\.11\.0/30 is already in use"):
            AccessLink(PREFIX + "b", 11, LinkSpec(down_bps=1e6, up_bps=1e6), net=NET).up()
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", dev], capture_output=True, text=True, check=True).stdout
        assert f"10.{NET}.11.1/30" in out  # the host's address is untouched
    finally:
        subprocess.run(["ip", "link", "del", dev], check=False)
