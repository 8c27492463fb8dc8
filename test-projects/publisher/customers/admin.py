from django.contrib import admin

from .models import Address, Contract, Country, Customer

admin.site.register([Address, Contract, Country, Customer])
