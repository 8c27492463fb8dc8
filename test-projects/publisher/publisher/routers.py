"""Two databases: the ledger app lives in "other", everything else in "default".

pubsubpull's own tables are migrated into both, because each database records
the changes of its own tables (and the requests that made them).
"""


class LedgerRouter:
    def db_for_read(self, model, **hints):
        return "other" if model._meta.app_label == "ledger" else None

    db_for_write = db_for_read

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if app_label == "ledger":
            return db == "other"
        if app_label == "pubsubpull":
            return True
        return db == "default"
