from django.contrib import admin

from pubsubpull.admin import HistoryMixin

from .models import Address, Contract, Country, Customer


@admin.register(Customer)
class CustomerAdmin(HistoryMixin, admin.ModelAdmin):
    list_display = ["name", "email", "country", "newsletter"]


admin.site.register([Address, Contract, Country])
