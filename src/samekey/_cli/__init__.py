"""The pieces of the ``samekey`` command (`samekey.cli` is its entry point).

One module per concern: `_args` turns the command line into checked values, `_output`
shapes records for a terminal or for JSON, `_inspect` lists and shows, `_resume` sends
pending operations again (on a few threads, each with its own client), `_progress`
tells the operator what is happening while it does, `_maintain` forgets and purges.
"""
