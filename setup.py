"""
Packaging for bridgeproxy.

C{twisted/plugins/} is shipped as plugin modules of the C{twisted.plugins}
namespace (no C{__init__.py} there), and the plugin cache is regenerated
after install where the install location is writable.
"""

from setuptools import find_packages, setup
from setuptools.command.install import install


class InstallAndCachePlugins(install):
    """An install that refreshes Twisted's plugin cache afterwards."""

    def run(self):
        super().run()
        try:
            from twisted.plugin import IPlugin, getPlugins

            list(getPlugins(IPlugin))
        except Exception:  # noqa: BLE001 - the cache is an optimisation only
            pass


setup(
    name="bridgeproxy",
    version="0.1.0",
    description="Twisted reverse proxy between AI coding clients and LLM providers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"]) + ["twisted.plugins"],
    # The dashboard's layout, style sheet and icon: it is served offline, from the package.
    package_data={"bridgeproxy.ui": ["templates/*.html", "static/*.css", "static/*.svg"]},
    install_requires=[
        "Twisted[tls]>=25.5",
        "treq>=24.9",
        "httptools>=0.6",
        "zope.interface>=6",
        "service-identity>=24.1",
        "pyOpenSSL>=24",
        "psycopg[binary]>=3.1",
        "prometheus-client>=0.17",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.2",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "openai>=1.40",
            "anthropic>=0.34",
            # The dashboard's tests: a real browser (Debian's chromium and chromium-driver),
            # and the OpenAPI document checked.
            "selenium>=4.20",
            "openapi-spec-validator>=0.7",
        ],
        "dev": ["mypy", "mypy-zope", "ruff", "towncrier", "mutmut"],
    },
    entry_points={"console_scripts": ["bridgeproxy = bridgeproxy.cli:main"]},
    cmdclass={"install": InstallAndCachePlugins},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
