"""What each command does: one thin module per command family.

A handler is ``def handler(ctx: Ctx, **parsed) -> Output | str | None``; it validates every
name first, then works on the store (``ctx.store``) and the hosts (``ctx.cluster``), never
holding the store lock across a remote command.  Handlers are registered in the command
table of ``imgstor.cli``.
"""
