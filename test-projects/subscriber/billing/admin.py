from django.contrib import admin

from .models import CustomerCountry, Welcome


@admin.register(CustomerCountry)
class CustomerCountryAdmin(admin.ModelAdmin):
    list_display = ["name", "country", "remote_id", "remote_sequence"]
    search_fields = ["name"]


@admin.register(Welcome)
class WelcomeAdmin(admin.ModelAdmin):
    list_display = ["username", "user_id", "via", "sequence", "at"]
