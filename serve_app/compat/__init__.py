"""Every use of a dependency's private or unstable API, one small module per dependency.

Each function names the attribute it reaches for and the versions it was checked on;
``tests/unit/test_compat.py`` has one test per use that fails, naming the attribute, when
a new version moves it. Nothing outside this package touches those attributes.
"""
