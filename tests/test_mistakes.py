"""Issue 9, mistakes that fail silently: a handler or framer that cannot work is refused
when it is set (TypeError / ValueError naming what to write instead), and methods hamanet
never calls (another library's callback names, misspelt callbacks) are warned about."""

from __future__ import annotations

import asyncio
import functools
import threading
import warnings

import hamanet
import pytest
from conftest import Echo, connect, recv_exactly, wait_until
from hamanet import _handler
from hamanet.framing import Delimiter, FixedSize, LengthPrefixed

HandlerWarning = hamanet.HandlerWarning


def endpoints():
    return [hamanet.Server, hamanet.Client]


def handler_warnings(make):
    """The HandlerWarnings ``make()`` emits, with every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [w for w in caught if issubclass(w.category, HandlerWarning)]


# -- 11. coroutine callbacks ----------------------------------------------------------------
async def _async_recv(tag, session, data):
    session.write(data)


class _AsyncCall:
    async def __call__(self, session, data):
        session.write(data)


class AsyncRecv(hamanet.Handler):
    async def on_recv(self, session, data):
        session.write(data)


class AsyncConnect(hamanet.Handler):
    async def on_connect(self, session):
        session.write(b"hello")

    def on_recv(self, session, data):
        pass


class AsyncGenRecv(hamanet.Handler):
    async def on_recv(self, session, data):
        yield data


class PartialRecv(hamanet.Handler):
    on_recv = functools.partial(_async_recv, "tag")


class CallableRecv(hamanet.Handler):
    on_recv = _AsyncCall()


class AsyncMessages(hamanet.Handler):
    framing = Delimiter(b"\n")

    async def on_messages(self, session, messages):
        pass


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (AsyncRecv, "on_recv"),
        (AsyncConnect, "on_connect"),
        (AsyncGenRecv, "on_recv"),
        (PartialRecv, "on_recv"),
        (CallableRecv, "on_recv"),
        (AsyncMessages, "on_messages"),
    ],
)
@pytest.mark.parametrize("endpoint", endpoints())
def test_coroutine_callbacks_are_refused(endpoint, cls, name):
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.{name}.*not supported") as info:
        endpoint(cls())
    message = str(info.value)
    assert "coroutine callbacks are not supported on a Server or Client" in message
    assert "hamanet.aio.serve" in message
    assert "run_coroutine_threadsafe" in message and f"def {name}(self, session" in message


def test_set_handler_refuses_a_coroutine_callback_and_keeps_the_old_handler(serve):
    server = serve(Echo())
    with pytest.raises(TypeError, match="on_recv.*coroutine callbacks are not supported"):
        server.set_handler(AsyncRecv())
    assert isinstance(server.handler, Echo)
    with connect(server.port) as sock:  # still echoing: nothing was silently swallowed
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"


# -- 12. framing and the data callbacks -----------------------------------------------------
class RecvOnly(hamanet.Handler):
    def on_recv(self, session, data):
        session.write(data)


class FramedRecvOnly(RecvOnly):
    framing = Delimiter(b"\n")


class MessagesOnly(hamanet.Handler):
    def on_messages(self, session, messages):
        for message in messages:
            session.write_frame(message)


class MessageOnly(hamanet.Handler):
    def on_message(self, session, message):
        session.write_frame(message)


class FramedMessages(MessagesOnly):
    framing = Delimiter(b"\n")


@pytest.mark.parametrize("endpoint", endpoints())
def test_framing_class_attribute_with_only_on_recv_is_refused(endpoint):
    with pytest.raises(TypeError, match="FramedRecvOnly overrides on_recv but has framing") as info:
        endpoint(FramedRecvOnly())
    assert "on_messages(self, session, messages)" in str(info.value)
    assert "on_message(self, session, message)" in str(info.value)


def test_bound_callbacks_framed_refuses_on_recv_only():
    with pytest.raises(TypeError, match="RecvOnly overrides on_recv but has framing"):
        _handler.bound_callbacks(RecvOnly(), framed=True)
    with pytest.raises(TypeError, match="RecvOnly overrides on_recv but has framing"):
        _handler.bound_callbacks(RecvOnly(), True)


@pytest.mark.parametrize(
    ("cls", "name"), [(MessagesOnly, "on_messages"), (MessageOnly, "on_message")]
)
def test_bound_callbacks_unframed_refuses_message_callbacks(cls, name):
    with pytest.raises(
        TypeError, match=rf"{cls.__name__} overrides {name} but there is no framing"
    ):
        _handler.bound_callbacks(cls(), framed=False)
    with pytest.raises(TypeError, match="pass framing="):
        _handler.bound_callbacks(cls(), False)


def test_bound_callbacks_old_form_only_refuses_what_it_can_know():
    # Without framed=, framing may still come from the Server option: accepted.
    on_messages = _handler.CALLBACK_NAMES.index("on_messages")
    assert _handler.bound_callbacks(MessagesOnly())[on_messages] is not None
    assert _handler.bound_callbacks(RecvOnly())[1] is not None
    with pytest.raises(TypeError, match="overrides on_recv but has framing"):
        _handler.bound_callbacks(FramedRecvOnly())


def test_misnamed_framing_attribute_is_named_in_the_error():
    class Lines(MessagesOnly):
        framer = Delimiter(b"\n")

    with pytest.raises(TypeError, match=r"Lines\.framer holds a framer.*framing="):
        _handler.bound_callbacks(Lines(), framed=False)


@pytest.mark.parametrize("endpoint", endpoints())
def test_framing_option_with_only_on_recv_is_refused(endpoint):
    with pytest.raises(TypeError, match="RecvOnly overrides on_recv but has framing"):
        endpoint(RecvOnly(), framing=LengthPrefixed(2))


@pytest.mark.parametrize("cls", [MessagesOnly, MessageOnly])
@pytest.mark.parametrize("endpoint", endpoints())
def test_message_callbacks_without_framing_are_refused(endpoint, cls):
    with pytest.raises(TypeError, match="but there is no framing.*pass framing="):
        endpoint(cls())


def test_set_handler_checks_against_the_endpoints_framing():
    server = hamanet.Server(MessagesOnly(), framing=Delimiter(b"\n"))
    with pytest.raises(TypeError, match="overrides on_recv but has framing"):
        server.set_handler(RecvOnly())
    plain = hamanet.Server(RecvOnly())
    with pytest.raises(TypeError, match="framing cannot change"):
        plain.set_handler(FramedMessages())


def test_handlers_that_can_work_are_accepted(serve):
    class Both(hamanet.Handler):  # written to work framed or not
        def on_recv(self, session, data):
            session.write(data)

        def on_messages(self, session, messages):
            for message in messages:
                session.write_frame(message)

    class Greeter(hamanet.Handler):  # framed, reads nothing: only writes
        framing = Delimiter(b"\n")

        def on_connect(self, session):
            session.write_frame(b"hello")
            session.close()

    class Disabled(hamanet.Handler):  # a callback set to None is not overridden
        on_recv = None

        def on_messages(self, session, messages):
            pass

    hamanet.Server(Both()).stop()
    hamanet.Server(Both(), framing=Delimiter(b"\n")).stop()
    hamanet.Server(MessagesOnly(), framing=Delimiter(b"\n")).stop()
    hamanet.Server(Disabled(), framing=FixedSize(4)).stop()
    server = serve(Greeter())
    with connect(server.port) as sock:
        assert recv_exactly(sock, 6) == b"hello\n"


# -- 13. other libraries' names and misspelt callbacks ------------------------------------
ASYNCIO_NAMES = {
    "data_received": "on_recv",
    "connection_made": "on_connect",
    "connection_lost": "on_close",
    "eof_received": "on_eof",
    "pause_writing": "on_pause_writing",
    "resume_writing": "on_resume_writing",
    "buffer_updated": "on_recv",
    "get_buffer": "on_recv",
}


@pytest.mark.parametrize(("name", "equivalent"), sorted(ASYNCIO_NAMES.items()))
def test_asyncio_callback_names_warn_with_hamanets_equivalent(name, equivalent):
    cls = type("Proto", (hamanet.Handler,), {name: lambda self, *args: None})
    caught = handler_warnings(lambda: hamanet.Server(cls()))
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"Proto.{name}" in message and "asyncio" in message
    assert f"{equivalent}(self, session" in message
    assert caught[0].filename == __file__, "the warning points at the user's code"


def test_twisted_names_warn_too():
    class Proto(hamanet.Handler):
        def dataReceived(self, data):
            pass

    caught = handler_warnings(lambda: hamanet.Client(Proto()))
    assert len(caught) == 1 and "on_recv(self, session, data)" in str(caught[0].message)


def test_handler_warning_is_a_user_warning():
    assert issubclass(HandlerWarning, UserWarning)


def test_handler_warning_is_exported():
    assert hamanet.HandlerWarning is _handler.HandlerWarning
    assert "HandlerWarning" in hamanet.__all__


def test_warned_once_per_class():
    class Proto(hamanet.Handler):
        def data_received(self, data):
            pass

    assert len(handler_warnings(lambda: hamanet.Server(Proto()))) == 1
    assert handler_warnings(lambda: hamanet.Server(Proto())) == []
    assert handler_warnings(lambda: hamanet.Client(Proto())) == []


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("on_receive", "on_recv"),
        ("on_recieve", "on_recv"),
        ("on_data", "on_recv"),
        ("onRecv", "on_recv"),
        ("on_connected", "on_connect"),
        ("on_connection", "on_connect"),
        ("OnConnect", "on_connect"),
        ("on_closed", "on_close"),
        ("on_disconnect", "on_close"),
        ("on_error", "on_close"),
        ("on_sent", "on_send"),
        ("on_pause", "on_pause_writing"),
    ],
)
def test_misspelt_callbacks_warn_with_the_closest_name(name, meant):
    cls = type("Handler2", (hamanet.Handler,), {name: lambda self, *args: None})
    caught = handler_warnings(lambda: hamanet.Server(cls()))
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"Handler2.{name} is not a hamanet callback" in message
    assert f"did you mean {meant}(self, session" in message


def test_misspelt_message_callback_under_framing():
    class Lines(hamanet.Handler):
        framing = Delimiter(b"\n")

        def on_messages(self, session, messages):
            pass

        def on_recieve(self, session, data):  # a helper: the real callback exists
            pass

    class Typo(hamanet.Handler):
        framing = Delimiter(b"\n")

        def on_lines(self, session, lines):
            pass

    assert handler_warnings(lambda: hamanet.Server(Lines())) == []
    (caught,) = handler_warnings(lambda: hamanet.Server(Typo()))
    assert "did you mean on_messages(self, session, messages)" in str(caught.message)


def test_no_warning_for_helpers_or_classes_written_for_both():
    class Helpers(hamanet.Handler):
        def on_recv(self, session, data):
            self.on_receive(session, data)

        def on_receive(self, session, data):  # a helper the real callback calls
            pass

        def on_login(self, session, user):  # an on_* helper not close to any callback
            pass

        def on_request(self, session, request):
            pass

        on_data = b"not a method"

    class Dual(asyncio.Protocol, hamanet.Handler):  # serves asyncio and hamanet alike
        def data_received(self, data):
            pass

        def on_recv(self, session, data):
            pass

    assert handler_warnings(lambda: hamanet.Server(Helpers())) == []
    assert handler_warnings(lambda: hamanet.Server(Dual())) == []


# -- other silent mistakes -----------------------------------------------------------------
@pytest.mark.parametrize("endpoint", endpoints())
def test_handler_class_instead_of_instance(endpoint):
    with pytest.raises(TypeError, match=r"not the class Echo itself: instantiate it.*Echo\(\)"):
        endpoint(Echo)
    with pytest.raises(TypeError, match="hamanet.Handler"):
        endpoint(hamanet.Handler)


def test_set_handler_with_a_class():
    server = hamanet.Server(Echo())
    with pytest.raises(TypeError, match="instantiate it"):
        server.set_handler(Echo)


def test_asyncio_protocol_is_refused_with_the_translation():
    class Proto(asyncio.Protocol):
        def data_received(self, data):
            pass

    with pytest.raises(TypeError, match=r"asyncio protocol.*data_received -> on_recv"):
        hamanet.Server(Proto())
    with pytest.raises(TypeError, match="asyncio protocol class"):
        hamanet.Server(Proto)


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ("def on_recv(self, data): pass", "on_recv"),
        ("def on_close(self, session): pass", "on_close"),
        ("def on_connect(self): pass", "on_connect"),
        ("def on_messages(self, session, messages, *, strict): pass", "on_messages"),
    ],
)
def test_callback_with_the_wrong_signature_is_refused(body, name):
    namespace: dict = {}
    exec(body, namespace)
    cls = type("Bad", (hamanet.Handler,), {name: namespace[name]})
    if name == "on_messages":
        cls.framing = Delimiter(b"\n")
    with pytest.raises(TypeError, match=rf"Bad\.{name}\(.*define it as {name}\(self, session"):
        hamanet.Server(cls())


def test_signatures_that_can_be_called_are_accepted():
    class Flexible(hamanet.Handler):
        def on_recv(self, *args):
            pass

        def on_close(self, session, exc=None, extra=1):
            pass

        @staticmethod
        def on_connect(session):
            pass

        on_send = functools.partial(lambda tag, session: None, "tag")

    hamanet.Server(Flexible()).stop()


def test_callback_assigned_to_the_instance_is_refused():
    class Plain(hamanet.Handler):
        pass

    handler = Plain()
    handler.on_recv = lambda session, data: session.write(data)
    with pytest.raises(TypeError, match="on_recv is assigned to the Plain instance"):
        hamanet.Server(handler)


# -- 16. framer arguments -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: FixedSize(2**70), "size"),
        (lambda: Delimiter(max_length=2**70), "max_length"),
        (lambda: LengthPrefixed(max_length=2**70), "max_length"),
        (lambda: LengthPrefixed(8, max_length=2**64), "max_length"),
        (lambda: FixedSize(2**40 + 1), "size"),
        (lambda: Delimiter(b"\n", max_length=2**40 + 1), "max_length"),
    ],
)
def test_huge_framer_sizes_are_a_value_error_naming_the_parameter(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must be at most"):
        make()


def test_framer_sizes_up_to_the_bound_are_accepted():
    for framing in (
        Delimiter(b"\n", max_length=2**40),
        LengthPrefixed(8, max_length=2**40),
        FixedSize(2**40),
    ):
        hamanet.Server(
            type("H", (hamanet.Handler,), {"on_messages": lambda self, s, m: None})(),
            framing=framing,
        ).stop()


@pytest.mark.parametrize(
    ("header_size", "includes_header", "largest"),
    [(1, False, 255), (1, True, 254), (2, False, 65535), (2, True, 65533), (4, False, 2**32 - 1)],
)
def test_length_prefixed_max_length_is_bounded_by_the_header(header_size, includes_header, largest):
    framing = LengthPrefixed(header_size, includes_header=includes_header, max_length=largest)
    assert framing.max_length == largest
    with pytest.raises(ValueError, match=rf"max_length.*{header_size}-byte length header") as info:
        LengthPrefixed(header_size, includes_header=includes_header, max_length=largest + 1)
    assert str(largest) in str(info.value)


def test_length_prefixed_default_max_length_is_unchanged():
    assert LengthPrefixed().max_length == 16 * 1024 * 1024
    assert LengthPrefixed(2).max_length == 16 * 1024 * 1024  # the header bounds it anyway
    assert LengthPrefixed(max_length=None).max_length == 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: FixedSize("16"), "size"),
        (lambda: FixedSize(16.0), "size"),
        (lambda: FixedSize(True), "size"),
        (lambda: Delimiter(max_length=1.5), "max_length"),
        (lambda: Delimiter(max_length="64"), "max_length"),
        (lambda: Delimiter("\n"), "delimiter"),
        (lambda: Delimiter(10), "delimiter"),
        (lambda: Delimiter(b"\n", keep_delimiter="no"), "keep_delimiter"),
        (lambda: LengthPrefixed("4"), "header_size"),
        (lambda: LengthPrefixed(4.0), "header_size"),
        (lambda: LengthPrefixed(max_length=2.5), "max_length"),
        (lambda: LengthPrefixed(byteorder=None), "byteorder"),
        (lambda: LengthPrefixed(includes_header="yes"), "includes_header"),
    ],
)
def test_framer_arguments_of_the_wrong_type_are_a_type_error(make, name):
    with pytest.raises(TypeError, match=rf"^{name} must be"):
        make()


def test_str_delimiter_says_to_use_bytes():
    with pytest.raises(TypeError, match=r"write b'\\r\\n'"):
        Delimiter("\r\n")


def test_framer_values_out_of_range_are_a_value_error():
    with pytest.raises(ValueError, match="^size must be a positive int"):
        FixedSize(-1)
    with pytest.raises(ValueError, match="^max_length must be a positive int"):
        LengthPrefixed(max_length=0)
    with pytest.raises(ValueError, match="^header_size must be 1, 2, 4 or 8"):
        LengthPrefixed(16)


def test_the_framing_base_class_is_not_a_framer():
    with pytest.raises(TypeError, match="Delimiter, LengthPrefixed or FixedSize"):
        hamanet.framing.Framing()


def test_check_framing_explains_a_class_or_bytes():
    check = hamanet._hamanet.check_framing
    assert check(None) is None
    framing = FixedSize(3)
    assert check(framing) is framing
    with pytest.raises(TypeError, match=r"not the class Delimiter itself: instantiate it"):
        check(Delimiter)
    with pytest.raises(TypeError, match=r"framing=hamanet.framing.Delimiter\(b'\\n'\)"):
        check(b"\n")
    with pytest.raises(TypeError, match=r"framing=hamanet.framing.Delimiter\(b'\\n'\)"):
        check("\n")
    with pytest.raises(TypeError, match="not 'int'"):
        check(4)


def test_framing_class_instead_of_instance_is_explained():
    with pytest.raises(TypeError, match="instantiate it"):
        hamanet.Server(MessagesOnly(), framing=LengthPrefixed)


def test_keep_delimiter_delivers_messages_with_their_delimiter(serve, client_factory):
    got: list[bytes] = []
    lock = threading.Lock()

    class Lines(hamanet.Handler):
        framing = Delimiter(b"\r\n", max_length=3, keep_delimiter=True)

        def on_messages(self, session, messages):
            with lock:
                got.extend(messages)
            for message in messages:
                session.write_frame(message[:-2].upper())  # write_frame adds the b"\r\n"

    server = serve(Lines())
    with connect(server.port) as sock:
        # max_length counts the message without its delimiter: b"abc" fits.
        sock.sendall(b"a\r\n\r\nab")
        sock.sendall(b"c\r\nx")
        assert recv_exactly(sock, 10) == b"A\r\n\r\nABC\r\n"
        wait_until(lambda: len(got) == 3, what="3 messages")
    assert got == [b"a\r\n", b"\r\n", b"abc\r\n"]
    assert repr(Lines.framing) == "Delimiter(b'\\r\\n', max_length=3, keep_delimiter=True)"
