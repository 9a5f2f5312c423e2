# -*- test-case-name: tests.test_plugins -*-
"""
Every interface of bridgeproxy.  Each docstring is the contract a plugin
author codes against.

A plugin is an object, made available in a module of the C{twisted.plugins}
package, that provides C{twisted.plugin.IPlugin} and one of the interfaces
below.  bridgeproxy finds it with C{twisted.plugin.getPlugins} and uses it
only when the configuration names it (by its C{name}).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IAuthExtractor(Interface):
    """
    Finds the caller's bridge credential on a request.

    Extractors run in the order C{[auth] extractors} names them; the first
    one to return a credential wins.
    """

    name = Attribute("The name the configuration uses for this extractor (str).")

    def extract(request):
        """
        Look for a credential.

        @param request: the L{twisted.web.iweb.IRequest}; its body is already
            read.  Use L{bridgeproxy.single_header} to read a header: it
            refuses a header sent twice with different values.
        @return: a L{bridgeproxy.Credential}, or L{None} to let the next
            extractor look.  An empty or whitespace-only value is absent:
            return L{None}.
        @raise bridgeproxy.BridgeError: to refuse the request outright
            (for example L{bridgeproxy.BadRequest} for an ambiguous header).
        """


class IInitiatorResolver(Interface):
    """
    Decides who initiated a request.

    Resolvers run in the order C{[initiator] resolvers} names them.  Each
    gets what the previous one returned and returns the initiator, changed
    or not.  After the chain, a request without an initiator is refused
    with 401.
    """

    name = Attribute("The name the configuration uses for this resolver (str).")

    def resolve(request, credential, client, initiator):
        """
        @param request: the L{twisted.web.iweb.IRequest}.
        @param credential: the L{bridgeproxy.Credential} the extractors found.
        @param client: the L{bridgeproxy.ClientInfo} detected for the request.
        @param initiator: the L{bridgeproxy.Initiator} so far, or L{None}.
        @return: an L{bridgeproxy.Initiator} (or L{None}), or a
            L{twisted.internet.defer.Deferred} that fires with one.
        @raise bridgeproxy.BridgeError: to refuse the request
            (L{bridgeproxy.AuthenticationFailed} for an unknown credential,
            L{bridgeproxy.PermissionDenied} for a disabled user).
        """


class IClientDetector(Interface):
    """
    Recognises the client program that sent a request.

    Detectors named in C{[clients] detectors} run in that order before the
    built-in table; the first to return a L{bridgeproxy.ClientInfo} wins.
    """

    name = Attribute("The name the configuration uses for this detector (str).")

    def detect(request, body):
        """
        @param request: the L{twisted.web.iweb.IRequest}.
        @param body: the request body parsed as JSON (a L{dict}) on
            intercepted routes, else L{None}.
        @return: a L{bridgeproxy.ClientInfo}, or L{None} when not recognised.
        """


class IIdentityBackend(Interface):
    """
    Knows which user a bridge token belongs to.
    """

    name = Attribute("The name the configuration uses for this backend (str).")

    def identify(token):
        """
        @param token: the bridge token (str).  Never log it.
        @return: a L{twisted.internet.defer.Deferred} firing with an
            L{bridgeproxy.Identity}, or L{None} when the token is unknown,
            expired or revoked.
        """

    def lookup_user(user_id):
        """
        @return: a L{twisted.internet.defer.Deferred} firing with the
            L{bridgeproxy.Identity} of the user with this id, or L{None}.
        """


class IUsageParser(Interface):
    """
    Reads a provider's answer as it streams past, without holding it up.
    """

    def feed(data):
        """Take the next bytes of the response body (any chunk boundaries)."""

    def ended():
        """
        Asked once a stream's connection has ended, before C{finish}.

        @return: whether the stream is whole: its terminal event went by, or
            the upstream reported an error in it.  When it is not, the
            client gets the provider's error event appended and the record
            says C{incomplete}.
        """

    def finish():
        """
        @return: the L{bridgeproxy.types.Usage} seen so far; called once, at
            the end, whether the body was complete or not.
        """


class IProvider(Interface):
    """
    An LLM provider: where its routes live, how its key is sent, what its
    errors look like and how its answers are read.
    """

    name = Attribute("The provider's name, also its URL prefix (str).")
    default_base_url = Attribute(
        "Base URL used when the configuration gives none (str), or None when it must be configured.")
    key_required = Attribute(
        "Whether the gateway must have a key for this provider (bool); when False and none is configured, "
        "requests go upstream without a provider credential.")
    passthrough = Attribute(
        "The default passthrough allow-list: a sequence of 'METHODS /path/pattern' rules (str) for "
        "paths forwarded without being parsed; anything neither intercepted nor allowed is refused "
        "with 404.")

    def route(subpath):
        """
        @param subpath: the request path after the provider's prefix
            (bytes, starting with C{b"/"}, no query string).
        Called for C{POST} requests only.

        @return: the name of the intercepted route (C{"chat.completions"}),
            or L{None} when the path is not an intercepted route (the
            passthrough allow-list then decides).
        """

    def upstream_url(base_url, subpath, query):
        """
        @return: the upstream URL (bytes) for C{subpath} and C{query}
            (bytes, without the C{?}; may be empty).
        """

    def set_central_key(headers, key):
        """Put the configured provider C{key} in C{headers} the provider's way."""

    def set_client_key(headers, authorization, api_key):
        """
        Put the client's own key (bring your own key) in C{headers}.

        @param authorization: the bearer token the client sent, or L{None}.
        @param api_key: the C{X-Api-Key} value the client sent, or L{None}.
        @return: the key sent (str), for the masked hint.
        """

    def error_body(error_kind, message):
        """
        @return: the provider's JSON error body (bytes) for a neutral
            C{error_kind} (see L{bridgeproxy.BridgeError.kind}).
        """

    def stream_error_event(route, error_kind, message):
        """
        @return: the bytes that end an SSE stream with an error event the
            provider's SDK understands.
        """

    def ask_stream_usage(route, body):
        """
        For C{[recording] ask_stream_usage}: a copy of a streamed request's
        parsed C{body} that asks the provider to report token usage, or
        L{None} when the body needs no change (the provider always reports
        it, or the client already asked).
        """

    def usage_parser(route, streamed):
        """
        @return: an L{IUsageParser} for an intercepted route's response.
        """

    def prompt_of(route, body):
        """
        @return: the last user prompt (str) in a parsed request body, or
            L{None}.
        """


class IConfigurable(Interface):
    """
    Optional, beside any of the plugin interfaces above: a plugin that needs
    configuration or services (the store, the clock) provides this too, and
    bridgeproxy uses what C{configure} returns in its place.
    """

    def configure(context):
        """
        @param context: a L{bridgeproxy.PluginContext}: the whole
            configuration, this plugin's own table (C{[plugins.<name>]}),
            the identity backend, the reactor/clock and a logger.
        @return: the configured object, providing the same interface.
        @raise bridgeproxy.ConfigError: for unusable options.
        """
