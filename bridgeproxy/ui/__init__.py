"""
The administrators' dashboard, served by the gateway at C{/ui/}: usage
over time, the interceptions and their detail, client sessions, users and
keys.  Server-rendered HTML and SVG; its style sheet and icon ship in the
package (C{static/}), its layout too (C{templates/}).  C{docs/ui.md}
describes it.
"""

from bridgeproxy.ui.resource import UIResource

__all__ = ["UIResource"]
