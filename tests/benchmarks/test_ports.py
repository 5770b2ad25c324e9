import socket

from benchmarks.ports import free_base_port


def test_consecutive_ports_are_free_on_both_families():
    base = free_base_port(3)
    for port in range(base, base + 3):
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))


def test_a_taken_port_is_never_returned():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::", 0))
        port = taken.getsockname()[1]
        for _ in range(50):
            assert free_base_port(1, low=port, high=port + 2) != port
