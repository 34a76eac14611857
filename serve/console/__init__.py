"""The browser console under /console (docs/console.md): the review queue for human
moderators, the audit log for admins, and on-call's drift and rollout pages. Server-rendered
(Jinja2 through Starlette's templates, a few lines of plain JS for keyboard shortcuts),
signed-in per person (serve/users), every form CSRF-protected."""
