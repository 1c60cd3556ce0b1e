"""`python -m node.cli`: ferry, run by the Python it is installed in (the post-build
hook script uses this, so it works whatever PATH Nix gives it)."""

from node.cli import main

main()
